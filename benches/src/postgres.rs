//! The PostgreSQL baseline: the same job as the vault, done the way a user
//! would otherwise do it. Every field is encrypted with pgcrypto
//! (`pgp_sym_encrypt(v, k, 'cipher-algo=aes256, s2k-mode=1')`); every read
//! decrypts the fields and every request inserts an audit row in the same
//! transaction; `synchronous_commit = on`. A real server, started in a
//! temporary folder on loopback (installed from Debian packages if
//! missing, when running as root).

use std::path::{Path, PathBuf};
use std::process::Command;

use tokio_postgres::{Client, NoTls};

use crate::load::Shape;

/// The pgcrypto options the baseline encrypts with.
pub const PGP_OPTIONS: &str = "cipher-algo=aes256, s2k-mode=1";

/// A PostgreSQL server of the bench's own; stopped when dropped.
#[derive(Debug)]
pub struct Server {
    bin: PathBuf,
    data: PathBuf,
    /// Runs the server's tools as this user (PostgreSQL refuses root).
    run_as: Option<String>,
    /// Its loopback port.
    pub port: u16,
    _dir: tempfile::TempDir,
}

/// The directory of the newest installed PostgreSQL's binaries.
fn find_bin() -> Option<PathBuf> {
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .ok()?
        .flatten()
        .filter_map(|e| {
            let v = e.file_name().to_str()?.parse::<u32>().ok()?;
            let bin = e.path().join("bin");
            bin.join("initdb").exists().then_some((v, bin))
        })
        .collect();
    versions.sort();
    versions.pop().map(|(_, bin)| bin)
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| o.stdout.starts_with(b"0\n"))
}

/// Installs PostgreSQL from Debian packages if it is missing (as root).
fn ensure_installed() -> Result<PathBuf, String> {
    if let Some(bin) = find_bin() {
        return Ok(bin);
    }
    if !is_root() {
        return Err("PostgreSQL is not installed (apt-get install postgresql, as root)".into());
    }
    eprintln!("installing PostgreSQL (apt-get install postgresql) for the baseline");
    for args in [
        &["update", "-qq"][..],
        &["install", "-y", "-qq", "postgresql"][..],
    ] {
        let status = Command::new("apt-get")
            .args(args)
            .env("DEBIAN_FRONTEND", "noninteractive")
            .status()
            .map_err(|e| format!("apt-get: {e}"))?;
        if !status.success() {
            return Err(format!("apt-get {} failed", args.join(" ")));
        }
    }
    find_bin().ok_or_else(|| "PostgreSQL installed, but no initdb found".into())
}

/// The numeric uid and gid of `user`.
fn ids_of(user: &str) -> Result<(u32, u32), String> {
    let id = |flag: &str| -> Result<u32, String> {
        let out = Command::new("id")
            .args([flag, user])
            .output()
            .map_err(|e| format!("id: {e}"))?;
        String::from_utf8_lossy(&out.stdout)
            .trim()
            .parse()
            .map_err(|_| format!("no user {user} to run PostgreSQL as"))
    };
    Ok((id("-u")?, id("-g")?))
}

impl Server {
    /// Installs (if needed), initialises and starts a server on a free
    /// loopback port, with `synchronous_commit = on`, `fsync = on` and room
    /// for `max_connections` clients.
    pub fn start(max_connections: usize) -> Result<Server, String> {
        let bin = ensure_installed()?;
        let dir = tempfile::tempdir().map_err(|e| format!("temporary folder: {e}"))?;
        let data = dir.path().join("pgdata");
        std::fs::create_dir(&data).map_err(|e| e.to_string())?;
        let run_as = is_root().then(|| "postgres".to_owned());
        if let Some(user) = &run_as {
            use std::os::unix::fs::PermissionsExt as _;
            let (uid, gid) = ids_of(user)?;
            std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755))
                .map_err(|e| e.to_string())?;
            std::os::unix::fs::chown(&data, Some(uid), Some(gid)).map_err(|e| e.to_string())?;
        }
        let mut server = Server {
            bin,
            data,
            run_as,
            port: 0,
            _dir: dir,
        };
        server.tool(
            "initdb",
            &[
                "-D",
                &server.data.to_string_lossy(),
                "-U",
                "bench",
                "--auth=trust",
                "-E",
                "UTF8",
                "--no-sync",
            ],
        )?;
        // A free port is chosen just before starting, and again if another
        // process took it meanwhile (tests bind ports in parallel).
        let mut attempt = 0;
        loop {
            server.port = {
                let l = std::net::TcpListener::bind("127.0.0.1:0").map_err(|e| e.to_string())?;
                l.local_addr().map_err(|e| e.to_string())?.port()
            };
            let options = format!(
                "-p {} -k '{}' -c listen_addresses=127.0.0.1 -c synchronous_commit=on \
                 -c fsync=on -c max_connections={}",
                server.port,
                server.data.display(),
                max_connections.saturating_add(10)
            );
            let started = server.tool(
                "pg_ctl",
                &[
                    "-D",
                    &server.data.to_string_lossy(),
                    "-o",
                    &options,
                    "-l",
                    &server.data.join("server.log").to_string_lossy(),
                    "-w",
                    "start",
                ],
            );
            attempt += 1;
            match started {
                Ok(()) => break,
                Err(e) if attempt >= 3 => return Err(e),
                Err(_) => {}
            }
        }
        Ok(server)
    }

    fn tool(&self, name: &str, args: &[&str]) -> Result<(), String> {
        let program = self.bin.join(name);
        let mut cmd = match &self.run_as {
            Some(user) => {
                let mut c = Command::new("runuser");
                c.args(["-u", user, "--"]).arg(&program);
                c
            }
            None => Command::new(&program),
        };
        let out = cmd
            .args(args)
            .current_dir(self.data.parent().unwrap_or(Path::new("/")))
            .output()
            .map_err(|e| format!("{name}: {e}"))?;
        if !out.status.success() {
            return Err(format!(
                "{name} failed: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            ));
        }
        Ok(())
    }

    /// A new connection.
    pub async fn connect(&self) -> Result<Client, String> {
        let (client, connection) = tokio_postgres::connect(
            &format!(
                "host=127.0.0.1 port={} user=bench dbname=postgres",
                self.port
            ),
            NoTls,
        )
        .await
        .map_err(|e| format!("connecting to PostgreSQL: {e}"))?;
        tokio::spawn(connection);
        Ok(client)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let data = self.data.to_string_lossy().into_owned();
        let _ = self.tool("pg_ctl", &["-D", &data, "-m", "fast", "-w", "stop"]);
    }
}

/// The statements of the baseline for records of `shape`.
#[derive(Debug, Clone)]
pub struct Statements {
    /// Insert or replace one record, and its audit row: $1 id, $2 subject,
    /// $3 key, $4.. the field values.
    pub put: String,
    /// Read one record's fields decrypted, and insert its audit row: $1
    /// id, $2 key.
    pub get: String,
    /// The same as `put` for many records: $1 ids, $2 subjects, $3 key,
    /// $4.. one array per field.
    pub batch_put: String,
    /// The same as `get` for many records: $1 ids, $2 key.
    pub batch_get: String,
}

impl Statements {
    /// The statements for `fields` fields.
    pub fn new(fields: usize) -> Statements {
        let cols: Vec<String> = (0..fields).map(|f| format!("f{f}")).collect();
        let enc = |p: usize| format!("pgp_sym_encrypt(${p}, $3, '{PGP_OPTIONS}')");
        let dec: Vec<String> = cols
            .iter()
            .map(|c| format!("pgp_sym_decrypt({c}, $2)"))
            .collect();
        let set: Vec<String> = cols.iter().map(|c| format!("{c} = excluded.{c}")).collect();
        let audit = |op: &str, ids: &str| {
            format!(
                "WITH audit_row AS (INSERT INTO audit (principal, purpose, op, records) \
                 VALUES ('bench', 'benchmark', '{op}', {ids})) "
            )
        };
        let put = format!(
            "{}INSERT INTO records (id, subject, {}) VALUES ($1, $2, {}) \
             ON CONFLICT (id) DO UPDATE SET subject = excluded.subject, {}",
            audit("write", "ARRAY[$1::text]"),
            cols.join(", "),
            (0..fields)
                .map(|f| enc(4 + f))
                .collect::<Vec<_>>()
                .join(", "),
            set.join(", ")
        );
        let get = format!(
            "{}SELECT {} FROM records WHERE id = $1",
            audit("read", "ARRAY[$1::text]"),
            dec.join(", ")
        );
        let unnest: Vec<String> = (0..fields).map(|f| format!("${}::text[]", 4 + f)).collect();
        let batch_put = format!(
            "{}INSERT INTO records (id, subject, {}) \
             SELECT id, subject, {} FROM unnest($1::text[], $2::text[], {}) AS v(id, subject, {}) \
             ON CONFLICT (id) DO UPDATE SET subject = excluded.subject, {}",
            audit("write", "$1::text[]"),
            cols.join(", "),
            cols.iter()
                .map(|c| format!("pgp_sym_encrypt({c}, $3, '{PGP_OPTIONS}')"))
                .collect::<Vec<_>>()
                .join(", "),
            unnest.join(", "),
            cols.join(", "),
            set.join(", ")
        );
        let batch_get = format!(
            "{}SELECT id, {} FROM records WHERE id = ANY($1::text[])",
            audit("read", "$1::text[]"),
            dec.join(", ")
        );
        Statements {
            put,
            get,
            batch_put,
            batch_get,
        }
    }

    /// The tables (and pgcrypto).
    pub fn schema(fields: usize) -> String {
        let cols: Vec<String> = (0..fields)
            .map(|f| format!("f{f} bytea NOT NULL"))
            .collect();
        format!(
            "CREATE EXTENSION IF NOT EXISTS pgcrypto; \
             CREATE TABLE records (id text PRIMARY KEY, subject text NOT NULL, {}); \
             CREATE TABLE audit (n bigserial PRIMARY KEY, at timestamptz NOT NULL DEFAULT now(), \
             principal text NOT NULL, purpose text NOT NULL, op text NOT NULL, records text[] NOT NULL);",
            cols.join(", ")
        )
    }
}

/// The statements prepared on one connection (parsed and planned once, as
/// an application would).
#[derive(Debug, Clone)]
pub struct Prepared {
    put: tokio_postgres::Statement,
    get: tokio_postgres::Statement,
    batch_put: tokio_postgres::Statement,
    batch_get: tokio_postgres::Statement,
}

impl Prepared {
    /// Prepares `statements` on `client`.
    pub async fn new(client: &Client, statements: &Statements) -> Result<Prepared, String> {
        let prepare = |q: &str| {
            let q = q.to_owned();
            async move {
                client
                    .prepare(&q)
                    .await
                    .map_err(|e| format!("PostgreSQL prepare: {e}"))
            }
        };
        Ok(Prepared {
            put: prepare(&statements.put).await?,
            get: prepare(&statements.get).await?,
            batch_put: prepare(&statements.batch_put).await?,
            batch_get: prepare(&statements.batch_get).await?,
        })
    }
}

/// Writes the `shape.records` records, in batches.
pub async fn preload(
    client: &Client,
    statements: &Prepared,
    shape: &Shape,
    key: &str,
    rng: &mut impl rand::Rng,
) -> Result<(), String> {
    for start in (0..shape.records).step_by(100) {
        let n: Vec<usize> = (start..(start + 100).min(shape.records)).collect();
        batch_put(client, statements, shape, key, &n, rng).await?;
    }
    Ok(())
}

/// One batch put of records `n`.
pub async fn batch_put(
    client: &Client,
    statements: &Prepared,
    shape: &Shape,
    key: &str,
    n: &[usize],
    rng: &mut impl rand::Rng,
) -> Result<(), String> {
    let ids: Vec<String> = n.iter().map(|&i| Shape::id(i)).collect();
    let subjects: Vec<String> = n.iter().map(|&i| Shape::subject(i)).collect();
    let mut columns: Vec<Vec<String>> = vec![Vec::with_capacity(n.len()); shape.fields];
    for _ in n {
        for (f, (_, v)) in shape.values(rng).into_iter().enumerate() {
            columns[f].push(v);
        }
    }
    let key = key.to_owned();
    let mut params: Vec<&(dyn tokio_postgres::types::ToSql + Sync)> = vec![&ids, &subjects, &key];
    for c in &columns {
        params.push(c);
    }
    client
        .execute(&statements.batch_put, &params)
        .await
        .map(drop)
        .map_err(|e| format!("PostgreSQL batch put: {e}"))
}

/// One put of record `n`.
pub async fn put(
    client: &Client,
    statements: &Prepared,
    shape: &Shape,
    key: &str,
    n: usize,
    rng: &mut impl rand::Rng,
) -> Result<(), String> {
    let id = Shape::id(n);
    let subject = Shape::subject(n);
    let key = key.to_owned();
    let values: Vec<String> = shape.values(rng).into_iter().map(|(_, v)| v).collect();
    let mut params: Vec<&(dyn tokio_postgres::types::ToSql + Sync)> = vec![&id, &subject, &key];
    for v in &values {
        params.push(v);
    }
    client
        .execute(&statements.put, &params)
        .await
        .map(drop)
        .map_err(|e| format!("PostgreSQL put: {e}"))
}

/// One get of record `n`: its fields, decrypted.
pub async fn get(
    client: &Client,
    statements: &Prepared,
    key: &str,
    n: usize,
) -> Result<Vec<String>, String> {
    let row = client
        .query_one(&statements.get, &[&Shape::id(n), &key])
        .await
        .map_err(|e| format!("PostgreSQL get: {e}"))?;
    (0..row.len())
        .map(|i| row.try_get::<_, String>(i).map_err(|e| e.to_string()))
        .collect()
}

/// One batch get of records `n`.
pub async fn batch_get(
    client: &Client,
    statements: &Prepared,
    key: &str,
    n: &[usize],
) -> Result<usize, String> {
    let ids: Vec<String> = n.iter().map(|&i| Shape::id(i)).collect();
    client
        .query(&statements.batch_get, &[&ids, &key])
        .await
        .map(|rows| rows.len())
        .map_err(|e| format!("PostgreSQL batch get: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statements_name_every_field_and_parameter() {
        let s = Statements::new(3);
        for q in [&s.put, &s.batch_put] {
            assert!(
                q.contains("f0") && q.contains("f2") && !q.contains("f3"),
                "{q}"
            );
            assert!(
                q.contains(PGP_OPTIONS) && q.contains("INSERT INTO audit"),
                "{q}"
            );
        }
        assert!(s.put.contains("$6") && !s.put.contains("$7"));
        assert!(s.get.contains("pgp_sym_decrypt(f2, $2)") && s.get.contains("'read'"));
        assert!(s.batch_get.contains("ANY($1::text[])"));
        assert!(Statements::schema(2).contains("f1 bytea NOT NULL"));
    }
}
