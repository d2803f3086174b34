//! The `vaultctl` binary against real servers: collections, every value type
//! in and out, projection, delete, and its error contract (exit 1 for vault
//! errors, 2 for usage errors, one `error: ...` line on stderr, a JSON error
//! object with `--json`, and the token never printed).

use std::process::Stdio;

use serde_json::{json, Value as Json};
use tokio::io::AsyncWriteExt as _;
use tokio::process::Command;
use vault_client::{
    Collection, DataCategory, FieldSchema, FieldType, Record, Timestamp, Value, VaultClient,
};
use vault_server::storage::StoredRecord;
use vault_tests::{vaultctl_binary, FreezableVault, TestVault, TOKEN};

use crate::tamper::open_raw;
use crate::{all_types, user};

/// What one run of vaultctl did.
#[derive(Debug)]
pub(crate) struct Run {
    pub(crate) code: Option<i32>,
    pub(crate) stdout: String,
    pub(crate) stderr: String,
}

impl Run {
    /// Asserts success with nothing on stderr and stdout ending with
    /// exactly one line break; returns stdout.
    pub(crate) fn ok(&self) -> &str {
        assert_eq!(self.code, Some(0), "{self:?}");
        assert_eq!(self.stderr, "", "{self:?}");
        assert_one_line_break(&self.stdout);
        &self.stdout
    }

    /// Asserts success and parses stdout as one JSON document.
    pub(crate) fn json(&self) -> Json {
        let text = self.ok();
        assert_eq!(text.lines().count(), 1, "one line of JSON: {self:?}");
        serde_json::from_str(text).unwrap()
    }

    /// Asserts a failure without `--json`: `code`, one `error: ...` line on
    /// stderr and nothing on stdout. Returns the message.
    pub(crate) fn error(&self, code: i32) -> String {
        assert_eq!(self.code, Some(code), "{self:?}");
        assert_eq!(self.stdout, "", "{self:?}");
        one_error_line(&self.stderr)
    }

    /// Asserts a failure with `--json`: `code`, exactly
    /// `{"error":{"kind":kind,"message":m}}` on stdout and `error: m` as the
    /// one line on stderr. Returns the message.
    fn json_error(&self, code: i32, kind: &str) -> String {
        assert_eq!(self.code, Some(code), "{self:?}");
        assert_eq!(self.stdout.lines().count(), 1, "{self:?}");
        assert_one_line_break(&self.stdout);
        let body: Json = serde_json::from_str(&self.stdout).unwrap();
        let message = body["error"]["message"].as_str().unwrap().to_owned();
        assert_eq!(
            body,
            json!({"error": {"kind": kind, "message": message}}),
            "{self:?}"
        );
        assert_eq!(one_error_line(&self.stderr), message, "{self:?}");
        message
    }
}

/// Asserts that `stdout` ends with one line break and not two (so the
/// next shell prompt or error starts on a line of its own, after no blank
/// one).
pub(crate) fn assert_one_line_break(stdout: &str) {
    assert!(
        stdout.ends_with('\n') && !stdout.ends_with("\n\n"),
        "stdout must end with exactly one line break: {stdout:?}"
    );
}

/// The message of a stderr that is exactly one `error: <message>` line.
fn one_error_line(stderr: &str) -> String {
    assert!(stderr.ends_with('\n'), "{stderr:?}");
    assert_eq!(stderr.lines().count(), 1, "one line: {stderr:?}");
    let message = stderr
        .trim_end_matches('\n')
        .strip_prefix("error: ")
        .unwrap_or_else(|| panic!("no `error: ` prefix: {stderr:?}"));
    assert!(!message.is_empty(), "{stderr:?}");
    message.to_owned()
}

/// Runs vaultctl with `args` against `addr`, the token (if any) in
/// `VAULT_TOKEN`, and `stdin` on its standard input. Checks that neither the
/// given token nor the vault's real one is ever printed.
pub(crate) async fn vaultctl_at(
    addr: &str,
    token: Option<&str>,
    args: &[&str],
    stdin: Option<&str>,
) -> Run {
    let mut command = Command::new(vaultctl_binary());
    command
        .args(args)
        .env("VAULT_ADDR", addr)
        .env_remove("VAULT_TOKEN")
        // Every data request states a purpose; tests that check purposes
        // override it with --purpose or their own VAULT_PURPOSE.
        .env("VAULT_PURPOSE", vault_tests::PURPOSE)
        .env_remove("VAULT_TIMEOUT")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    if let Some(token) = token {
        command.env("VAULT_TOKEN", token);
    }
    let mut child = command.spawn().unwrap();
    let mut pipe = child.stdin.take().unwrap();
    if let Some(text) = stdin {
        pipe.write_all(text.as_bytes()).await.unwrap();
    }
    drop(pipe);
    let output = child.wait_with_output().await.unwrap();
    let run = Run {
        code: output.status.code(),
        stdout: String::from_utf8(output.stdout).unwrap(),
        stderr: String::from_utf8(output.stderr).unwrap(),
    };
    for secret in token.into_iter().chain([TOKEN]) {
        assert!(
            !run.stdout.contains(secret) && !run.stderr.contains(secret),
            "the token was printed by vaultctl {args:?}: {run:?}"
        );
    }
    run
}

/// Runs vaultctl with the vault's token.
pub(crate) async fn vaultctl(vault: &TestVault, args: &[&str]) -> Run {
    vaultctl_at(&vault.url(), Some(TOKEN), args, None).await
}

/// The schema that `collection create people` below asks for.
fn people() -> Collection {
    Collection::new("people")
        .region("eu")
        .description("People of the test")
        .field(
            FieldSchema::new("email", FieldType::String, DataCategory::Contact)
                .indexed()
                .masked(1, 4),
        )
        .field(FieldSchema::new(
            "age",
            FieldType::Int64,
            DataCategory::Identity,
        ))
        .field(FieldSchema::new(
            "score",
            FieldType::Double,
            DataCategory::Other,
        ))
        .field(FieldSchema::new(
            "vip",
            FieldType::Bool,
            DataCategory::Behavioural,
        ))
        .field(FieldSchema::new(
            "photo",
            FieldType::Bytes,
            DataCategory::Special,
        ))
        .field(FieldSchema::new(
            "born",
            FieldType::Timestamp,
            DataCategory::Identity,
        ))
        .field(FieldSchema::new("card", FieldType::String, DataCategory::Financial).masked(0, 4))
}

const PEOPLE_FIELDS: [&str; 14] = [
    "--field",
    "email:string:contact:indexed:mask=1,4",
    "--field",
    "age:int64:identity",
    "--field",
    "score:double:other",
    "--field",
    "vip:bool:behavioural",
    "--field",
    "photo:bytes:special",
    "--field",
    "born:timestamp:identity",
    "--field",
    "card:string:financial:mask=0,4",
];

#[tokio::test]
async fn vaultctl_collection_create_list_and_show() {
    let dir = tempfile::tempdir().unwrap();
    let vault = TestVault::start(dir.path(), "eu").await.unwrap();

    let mut args = vec!["collection", "create", "people"];
    args.extend(PEOPLE_FIELDS);
    args.extend(["--description", "People of the test"]);
    let out = vaultctl(&vault, &args).await;
    assert_eq!(
        out.ok(),
        "created collection people (region eu, 7 fields)\n"
    );
    // The real server stored exactly what the specs say.
    let client = vault.client().await;
    assert_eq!(client.collection("people").await.unwrap(), people());

    let shown = vaultctl(&vault, &["--json", "collection", "show", "people"])
        .await
        .json();
    assert_eq!(
        shown,
        json!({"name": "people", "region": "eu", "description": "People of the test", "fields": [
            {"name": "email", "type": "string", "category": "contact", "indexed": true,
             "mask": {"keep_first": 1, "keep_last": 4}},
            {"name": "age", "type": "int64", "category": "identity", "indexed": false},
            {"name": "score", "type": "double", "category": "other", "indexed": false},
            {"name": "vip", "type": "bool", "category": "behavioural", "indexed": false},
            {"name": "photo", "type": "bytes", "category": "special", "indexed": false},
            {"name": "born", "type": "timestamp", "category": "identity", "indexed": false},
            {"name": "card", "type": "string", "category": "financial", "indexed": false,
             "mask": {"keep_first": 0, "keep_last": 4}}
        ]})
    );
    let out = vaultctl(&vault, &["collection", "show", "people"]).await;
    assert_eq!(
        out.ok(),
        "collection: people\nregion: eu\ndescription: People of the test\nfields (7):\n  \
         email:string:contact:indexed:mask=1,4\n  age:int64:identity\n  score:double:other\n  \
         vip:bool:behavioural\n  photo:bytes:special\n  born:timestamp:identity\n  \
         card:string:financial:mask=0,4\n"
    );
    // The global options may also come after the command.
    let out = vaultctl(&vault, &["collection", "show", "users", "--json"]).await;
    let users = out.json();
    assert_eq!(users["fields"].as_array().unwrap().len(), 5);
    assert_eq!(
        users["fields"][0],
        json!({"name": "email", "type": "string", "category": "contact", "indexed": false,
               "mask": {"keep_first": 1, "keep_last": 0}})
    );

    let out = vaultctl(&vault, &["collection", "list"]).await;
    assert_eq!(
        out.ok(),
        "NAME    REGION  FIELDS  DESCRIPTION\n\
         people  eu           7  People of the test\n\
         users   eu           5  Example collection seeded by vault-server --dev\n"
    );
    let listed = vaultctl(&vault, &["--json", "collection", "list"])
        .await
        .json();
    let listed = listed["collections"].as_array().unwrap().clone();
    assert_eq!(listed.len(), 2);
    assert_eq!(listed[0], shown, "list and show agree");
    assert_eq!(listed[1], users);

    // --json create prints the stored collection, its region filled in; an
    // explicit --region of the vault's own region is accepted.
    let created = vaultctl(
        &vault,
        &[
            "--json",
            "collection",
            "create",
            "orders",
            "--field",
            "total:double:financial",
            "--region",
            "eu",
        ],
    )
    .await
    .json();
    assert_eq!(
        created,
        json!({"name": "orders", "region": "eu", "description": "", "fields": [
            {"name": "total", "type": "double", "category": "financial", "indexed": false}
        ]})
    );

    // A schema file.
    let schema = dir.path().join("visits.json");
    std::fs::write(
        &schema,
        r#"{"description": "Visits", "fields": [
              {"name": "at", "type": "timestamp", "category": "behavioural"},
              {"name": "page", "type": "string", "category": "behavioural", "indexed": true}]}"#,
    )
    .unwrap();
    let out = vaultctl(
        &vault,
        &[
            "collection",
            "create",
            "visits",
            "--schema",
            schema.to_str().unwrap(),
        ],
    )
    .await;
    assert_eq!(
        out.ok(),
        "created collection visits (region eu, 2 fields)\n"
    );
    let visits = client.collection("visits").await.unwrap();
    assert_eq!(visits.description, "Visits");
    assert!(visits.fields[1].indexed);

    // Errors of the vault: a taken name, another region, an unknown collection.
    let out = vaultctl(
        &vault,
        &[
            "--json",
            "collection",
            "create",
            "people",
            "--field",
            "a:string:other",
        ],
    )
    .await;
    let message = out.json_error(1, "already_exists");
    assert!(message.contains("people"), "{message}");
    let out = vaultctl(
        &vault,
        &[
            "collection",
            "create",
            "abroad",
            "--field",
            "a:string:other",
            "--region",
            "us",
        ],
    )
    .await;
    let message = out.error(1);
    assert!(message.starts_with("failed precondition: "), "{message}");
    assert!(
        message.contains("us") && message.contains("eu"),
        "{message}"
    );
    let out = vaultctl(&vault, &["--json", "collection", "show", "nope"]).await;
    out.json_error(1, "not_found");
    // A duplicate field is refused before the vault is asked.
    let out = vaultctl(
        &vault,
        &[
            "--json",
            "collection",
            "create",
            "twice",
            "--field",
            "a:string:other",
            "--field",
            "a:int64:other",
        ],
    )
    .await;
    assert_eq!(
        out.json_error(1, "invalid_input"),
        "field `a` is defined twice"
    );
    assert_eq!(client.collections().await.unwrap().len(), 4);
    drop(client);
    vault.stop().await;
}

#[tokio::test]
async fn vaultctl_put_and_get_every_value_type() {
    let dir = tempfile::tempdir().unwrap();
    let vault = TestVault::start(dir.path(), "eu").await.unwrap();
    let client = vault.client().await;
    client
        .create_collection(&all_types("things"))
        .await
        .unwrap();

    let data = r#"{"s": "héllo ✓", "i": -9223372036854775808, "d": -0.125, "b": true,
                   "y": "AAEC/w==", "t": "2024-03-01T12:00:00.25+01:00"}"#;
    let out = vaultctl(
        &vault,
        &["put", "things", "t1", "--subject", "s1", "--data", data],
    )
    .await;
    assert_eq!(out.ok(), "stored things/t1\n");
    // What the server holds, read with the typed client.
    let expected = Record::new("things", "t1", "s1")
        .with("s", "héllo ✓")
        .with("i", i64::MIN)
        .with("d", -0.125)
        .with("b", true)
        .with("y", vec![0u8, 1, 2, 255])
        .with(
            "t",
            Timestamp {
                seconds: 1_709_290_800,
                nanos: 250_000_000,
            },
        );
    assert_eq!(client.get("things", "t1").await.unwrap(), expected);

    let got = vaultctl(&vault, &["--json", "get", "things", "t1"])
        .await
        .json();
    assert_eq!(
        got,
        json!({
            "collection": "things", "id": "t1", "subject_id": "s1",
            "fields": {"s": "héllo ✓", "i": i64::MIN, "d": -0.125, "b": true,
                       "y": "AAEC/w==", "t": "2024-03-01T11:00:00.250Z"}
        })
    );
    let out = vaultctl(&vault, &["get", "things", "t1"]).await;
    assert_eq!(
        out.ok(),
        "things/t1 (subject s1)\nb: true\nd: -0.125\ni: -9223372036854775808\n\
         s: héllo ✓\nt: 2024-03-01T11:00:00.250Z\ny: AAEC/w==\n"
    );

    // Timestamps as integer Unix seconds (also negative) and bare dates,
    // an integral double, unpadded base64; --data - reads stdin.
    let out = vaultctl_at(
        &vault.url(),
        Some(TOKEN),
        &[
            "--json",
            "put",
            "things",
            "t2",
            "--subject",
            "s2",
            "--data",
            "-",
        ],
        Some(r#"{"t": 1715000000, "d": 3, "i": 9223372036854775807, "y": "aGk", "b": false}"#),
    )
    .await;
    assert_eq!(
        out.json(),
        json!({"collection": "things", "id": "t2", "stored": true})
    );
    assert_eq!(
        client.get("things", "t2").await.unwrap(),
        Record::new("things", "t2", "s2")
            .with("t", Timestamp::from_unix_seconds(1_715_000_000))
            .with("d", 3.0)
            .with("i", i64::MAX)
            .with("y", b"hi".to_vec())
            .with("b", false)
    );
    let got = vaultctl(&vault, &["--json", "get", "things", "t2"])
        .await
        .json();
    assert_eq!(
        got["fields"],
        json!({"t": "2024-05-06T12:53:20Z", "d": 3.0, "i": i64::MAX, "y": "aGk=", "b": false})
    );

    // @FILE reads a file.
    let file = dir.path().join("t3.json");
    std::fs::write(&file, r#"{"t": -86400, "s": ""}"#).unwrap();
    let at_file = format!("@{}", file.display());
    let out = vaultctl(
        &vault,
        &["put", "things", "t3", "--subject", "s3", "--data", &at_file],
    )
    .await;
    assert_eq!(out.ok(), "stored things/t3\n");
    let out = vaultctl(&vault, &["get", "things", "t3"]).await;
    assert_eq!(
        out.ok(),
        "things/t3 (subject s3)\ns: \nt: 1969-12-31T00:00:00Z\n"
    );
    let out = vaultctl(
        &vault,
        &[
            "put",
            "things",
            "t4",
            "--subject",
            "s4",
            "--data",
            r#"{"t": "1815-12-10"}"#,
        ],
    )
    .await;
    out.ok();
    assert_eq!(
        client.get("things", "t4").await.unwrap().get("t"),
        Some(&Value::Timestamp(
            "1815-12-10T00:00:00Z".parse::<Timestamp>().unwrap()
        ))
    );

    // Put replaces the whole record.
    let out = vaultctl(
        &vault,
        &[
            "put",
            "things",
            "t1",
            "--subject",
            "s1",
            "--data",
            r#"{"s": "new"}"#,
        ],
    )
    .await;
    out.ok();
    assert_eq!(
        client.get("things", "t1").await.unwrap(),
        Record::new("things", "t1", "s1").with("s", "new")
    );

    // Stored control characters cannot drive the terminal: the human output
    // escapes them, the JSON output keeps them.
    let out = vaultctl(
        &vault,
        &[
            "put",
            "things",
            "t5",
            "--subject",
            "s5",
            "--data",
            r#"{"s": "line1\nline2\u001b[2J"}"#,
        ],
    )
    .await;
    out.ok();
    let out = vaultctl(&vault, &["get", "things", "t5"]).await;
    assert_eq!(
        out.ok(),
        "things/t5 (subject s5)\ns: line1\\nline2\\u{1b}[2J\n"
    );
    let got = vaultctl(&vault, &["--json", "get", "things", "t5"])
        .await
        .json();
    assert_eq!(got["fields"]["s"], json!("line1\nline2\u{1b}[2J"));
    drop(client);
    vault.stop().await;
}

#[tokio::test]
async fn vaultctl_get_fields_projects_on_the_server() {
    let dir = tempfile::tempdir().unwrap();
    let vault = TestVault::start(dir.path(), "eu").await.unwrap();
    let client = vault.client().await;
    client.put(&user("u1", "s1")).await.unwrap();
    client
        .put(&Record::new("users", "u2", "s2").with("email", "u2@example.eu"))
        .await
        .unwrap();

    let before = vault.engine().stats().fields_decrypted;
    let out = vaultctl(&vault, &["get", "users", "u1", "--fields", "country,email"]).await;
    assert_eq!(
        out.ok(),
        "users/u1 (subject s1)\ncountry: FR\nemail: u1@example.eu\n"
    );
    assert_eq!(
        vault.engine().stats().fields_decrypted - before,
        2,
        "only the projected fields are decrypted"
    );

    // Repeated --fields, and --json.
    let got = vaultctl(
        &vault,
        &[
            "--json", "get", "users", "u1", "--fields", "name", "--fields", "phone",
        ],
    )
    .await
    .json();
    assert_eq!(
        got,
        json!({"collection": "users", "id": "u1", "subject_id": "s1",
               "fields": {"name": "Ada Lovelace", "phone": "+33612345678"}})
    );

    // A projected field the record lacks is left out.
    let got = vaultctl(
        &vault,
        &["--json", "get", "users", "u2", "--fields", "email,name"],
    )
    .await
    .json();
    assert_eq!(got["fields"], json!({"email": "u2@example.eu"}));
    let out = vaultctl(&vault, &["get", "users", "u2", "--fields", "name"]).await;
    assert_eq!(out.ok(), "users/u2 (subject s2)\n");

    // A field the schema lacks is an error of the server.
    let out = vaultctl(
        &vault,
        &[
            "--json",
            "get",
            "users",
            "u1",
            "--fields",
            "email,shoe_size",
        ],
    )
    .await;
    let message = out.json_error(1, "invalid_input");
    assert!(message.contains("shoe_size"), "{message}");
    drop(client);
    vault.stop().await;
}

#[tokio::test]
async fn vaultctl_delete() {
    let dir = tempfile::tempdir().unwrap();
    let vault = TestVault::start(dir.path(), "eu").await.unwrap();
    let client = vault.client().await;
    client.put(&user("u1", "s1")).await.unwrap();
    client.put(&user("u2", "s2")).await.unwrap();

    let out = vaultctl(&vault, &["delete", "users", "u1"]).await;
    assert_eq!(out.ok(), "deleted users/u1\n");
    assert!(matches!(
        client.get("users", "u1").await,
        Err(vault_client::Error::NotFound(_))
    ));
    // Deleting an absent record is not an error.
    let out = vaultctl(&vault, &["delete", "users", "u1"]).await;
    assert_eq!(out.ok(), "not found: users/u1\n");

    let out = vaultctl(&vault, &["--json", "delete", "users", "u2"]).await;
    assert_eq!(out.ok(), "{\"deleted\":true}\n");
    let out = vaultctl(&vault, &["--json", "delete", "users", "u2"]).await;
    assert_eq!(out.ok(), "{\"deleted\":false}\n");

    let out = vaultctl(&vault, &["--json", "get", "users", "u2"]).await;
    let message = out.json_error(1, "not_found");
    assert!(message.starts_with("not found"), "{message}");
    // An unknown collection is an error, not a deleted-nothing.
    let out = vaultctl(&vault, &["delete", "nope", "u1"]).await;
    assert!(out.error(1).starts_with("not found"));
    drop(client);
    vault.stop().await;
}

#[tokio::test]
async fn vaultctl_bad_data_is_refused_without_echoing_values() {
    let dir = tempfile::tempdir().unwrap();
    let vault = TestVault::start(dir.path(), "eu").await.unwrap();
    let client = vault.client().await;
    client
        .create_collection(&all_types("things"))
        .await
        .unwrap();

    // An unknown field names the field and the schema's fields.
    let out = vaultctl(
        &vault,
        &[
            "--json",
            "put",
            "users",
            "x",
            "--subject",
            "s",
            "--data",
            r#"{"email": "secret-mail@example.eu", "shoe_size": 44}"#,
        ],
    )
    .await;
    assert_eq!(
        out.json_error(1, "invalid_input"),
        "field `shoe_size` is not in the schema of collection `users` \
         (its fields: email, name, phone, birth_date, country)"
    );
    assert!(!out.stdout.contains("secret-mail") && !out.stderr.contains("secret-mail"));

    // A value of the wrong JSON type: the message names the field and the
    // expected type, never the value.
    let cases = [
        (
            r#"{"i": "SECRET-4711"}"#,
            "field `i`: expected an int64 (a JSON integer), got a string",
        ),
        (
            r#"{"i": 47.11}"#,
            "field `i`: expected an int64 (a JSON integer), got a number with a fraction or exponent",
        ),
        (
            r#"{"s": 471147114711}"#,
            "field `s`: expected a string, got a number",
        ),
        (
            r#"{"d": "SECRET-0.4711"}"#,
            "field `d`: expected a double (a JSON number), got a string",
        ),
        (
            r#"{"b": "SECRET-true"}"#,
            "field `b`: expected a bool (true or false), got a string",
        ),
        (
            r#"{"y": "SECRET not base64!"}"#,
            "field `y`: expected bytes (a base64 string), got a string that is not valid base64",
        ),
        (
            r#"{"t": "SECRET 17/05/1990"}"#,
            "field `t`: expected a timestamp (an RFC 3339 string such as 2024-03-01T12:00:00Z, \
             or integer Unix seconds), got a string that is not an RFC 3339 timestamp",
        ),
        (
            r#"{"t": [471147114711]}"#,
            "field `t`: expected a timestamp (an RFC 3339 string such as 2024-03-01T12:00:00Z, \
             or integer Unix seconds), got an array",
        ),
    ];
    for (data, expected) in cases {
        for json_output in [false, true] {
            let mut args = vec!["put", "things", "x", "--subject", "s", "--data", data];
            if json_output {
                args.insert(0, "--json");
            }
            let out = vaultctl(&vault, &args).await;
            let message = if json_output {
                out.json_error(1, "invalid_input")
            } else {
                out.error(1)
            };
            assert_eq!(message, expected, "{data}");
            for secret in ["SECRET", "4711"] {
                assert!(
                    !out.stdout.contains(secret) && !out.stderr.contains(secret),
                    "{data}: {out:?}"
                );
            }
        }
    }

    // Not JSON, and not an object.
    let out = vaultctl(
        &vault,
        &[
            "--json",
            "put",
            "things",
            "x",
            "--subject",
            "s",
            "--data",
            r#"{"s": "SECRET-unterminated"#,
        ],
    )
    .await;
    let message = out.json_error(1, "invalid_input");
    assert!(message.starts_with("--data is not valid JSON"), "{message}");
    assert!(!out.stdout.contains("SECRET") && !out.stderr.contains("SECRET"));
    let out = vaultctl(
        &vault,
        &[
            "put",
            "things",
            "x",
            "--subject",
            "s",
            "--data",
            r#"["SECRET"]"#,
        ],
    )
    .await;
    assert_eq!(
        out.error(1),
        "the record data must be a JSON object of field names to values, not an array"
    );

    // The server's own checks come back the same way: an id with a control
    // character, and a record over the size limit.
    let out = vaultctl(
        &vault,
        &[
            "--json",
            "put",
            "things",
            "bad\tid",
            "--subject",
            "s",
            "--data",
            "{}",
        ],
    )
    .await;
    assert_eq!(
        out.json_error(1, "invalid_input"),
        "invalid input: record id contains a control character"
    );
    let big = json!({"s": "x".repeat(64 * 1024 + 1)}).to_string();
    let out = vaultctl_at(
        &vault.url(),
        Some(TOKEN),
        &[
            "--json",
            "put",
            "things",
            "big",
            "--subject",
            "s",
            "--data",
            "-",
        ],
        Some(&big),
    )
    .await;
    let message = out.json_error(1, "too_large");
    assert!(
        message.starts_with("too large: record of 65537 bytes"),
        "{message}"
    );

    // Nothing was written.
    let batch = client.get_many("things", &["x", "big"], &[]).await.unwrap();
    assert!(batch.records.is_empty());
    assert!(client
        .get_many("users", &["x"], &[])
        .await
        .unwrap()
        .records
        .is_empty());
    drop(client);
    vault.stop().await;
}

#[tokio::test]
async fn vaultctl_usage_errors_exit_2() {
    let dir = tempfile::tempdir().unwrap();
    let vault = TestVault::start(dir.path(), "eu").await.unwrap();
    let url = vault.url();

    // Command lines clap refuses: exit 2, one `error: ` line on stderr,
    // nothing on stdout unless --json.
    let refused: [&[&str]; 6] = [
        &["get", "users"],
        &["collection", "create", "x", "--field", "a:text:other"],
        &[
            "collection",
            "create",
            "x",
            "--field",
            "age:int64:other:mask=1,1",
        ],
        &["collection", "create", "x"],
        &["--timeout", "0", "collection", "list"],
        &["frobnicate"],
    ];
    for args in refused {
        let out = vaultctl_at(&url, Some(TOKEN), args, None).await;
        assert_eq!(out.code, Some(2), "{args:?}: {out:?}");
        assert_eq!(out.stdout, "", "{args:?}");
        assert!(out.stderr.starts_with("error: "), "{args:?}: {out:?}");
        assert_eq!(
            out.stderr.trim_end().lines().count(),
            1,
            "one line: {out:?}"
        );

        let mut with_json = vec!["--json"];
        with_json.extend(args);
        let out = vaultctl_at(&url, Some(TOKEN), &with_json, None).await;
        assert_eq!(out.code, Some(2), "{args:?}: {out:?}");
        let body: Json = serde_json::from_str(&out.stdout).unwrap();
        assert_eq!(body["error"]["kind"], json!("usage"), "{args:?}");
        let message = body["error"]["message"].as_str().unwrap();
        assert!(
            !message.is_empty() && !message.contains('\n'),
            "{args:?}: {message:?}"
        );
    }
    let out = vaultctl_at(&url, Some(TOKEN), &["--json", "get", "users"], None).await;
    let body: Json = serde_json::from_str(&out.stdout).unwrap();
    assert_eq!(
        body,
        json!({"error": {"kind": "usage",
                         "message": "the following required arguments were not provided: <ID>"}})
    );

    // No token at all: a usage error of vaultctl itself, one line.
    let out = vaultctl_at(&url, None, &["collection", "list"], None).await;
    assert_eq!(out.error(2), "no token: set VAULT_TOKEN or pass --token");
    let out = vaultctl_at(&url, None, &["--json", "get", "users", "u1"], None).await;
    assert_eq!(
        out.json_error(2, "usage"),
        "no token: set VAULT_TOKEN or pass --token"
    );
    vault.stop().await;
}

#[tokio::test]
async fn vaultctl_tokens_are_checked_and_never_printed() {
    let dir = tempfile::tempdir().unwrap();
    let vault = TestVault::start(dir.path(), "eu").await.unwrap();
    let url = vault.url();
    let wrong = "not-the-token-xyz";

    let out = vaultctl_at(&url, Some(wrong), &["--json", "collection", "list"], None).await;
    assert_eq!(
        out.json_error(1, "unauthenticated"),
        "unauthenticated: invalid token"
    );
    let out = vaultctl_at(
        &url,
        Some(wrong),
        &["put", "users", "u1", "--subject", "s1", "--data", "{}"],
        None,
    )
    .await;
    assert_eq!(out.error(1), "unauthenticated: invalid token");
    assert!(matches!(
        vault.client().await.get("users", "u1").await,
        Err(vault_client::Error::NotFound(_))
    ));

    // --token on the command line: the right one works, a wrong one is not
    // echoed either (vaultctl_at checks every run for both tokens).
    let out = vaultctl_at(&url, None, &["--token", TOKEN, "collection", "list"], None).await;
    assert!(out.ok().contains("users"));
    let out = vaultctl_at(
        &url,
        None,
        &["--json", "collection", "list", "--token", wrong],
        None,
    )
    .await;
    out.json_error(1, "unauthenticated");
    let out = vaultctl_at(
        &url,
        Some(TOKEN),
        &["--token", wrong, "collection", "list"],
        None,
    )
    .await;
    assert_eq!(
        out.error(1),
        "unauthenticated: invalid token",
        "--token wins over VAULT_TOKEN"
    );

    // A token that cannot be sent is refused by the client, without echo.
    let unsendable = "secret token with spaces";
    let out = vaultctl_at(
        &url,
        Some(unsendable),
        &["--json", "collection", "list"],
        None,
    )
    .await;
    assert_eq!(
        out.json_error(1, "invalid_input"),
        "invalid input: the token may only have visible ASCII characters"
    );
    assert!(!out.stdout.contains("secret") && !out.stderr.contains("secret"));
    vault.stop().await;
}

#[tokio::test]
async fn vaultctl_purpose_is_sent_and_checked() {
    let dir = tempfile::tempdir().unwrap();
    let vault = TestVault::start(dir.path(), "eu").await.unwrap();
    let url = vault.url();
    vault.client().await.put(&user("u1", "s1")).await.unwrap();

    let out = vaultctl_at(
        &url,
        Some(TOKEN),
        &[
            "--purpose",
            "support-ticket 42",
            "get",
            "users",
            "u1",
            "--fields",
            "country",
        ],
        None,
    )
    .await;
    assert_eq!(out.ok(), "users/u1 (subject s1)\ncountry: FR\n");

    // Too long for the server (at most 128 characters).
    let long = "p".repeat(129);
    let out = vaultctl_at(
        &url,
        Some(TOKEN),
        &["--json", "--purpose", &long, "collection", "list"],
        None,
    )
    .await;
    assert_eq!(
        out.json_error(1, "invalid_input"),
        "invalid input: x-vault-purpose must be at most 128 printable ASCII characters"
    );
    // Not ASCII: refused by the client before any call.
    let out = vaultctl_at(
        &url,
        Some(TOKEN),
        &["--purpose", "facturación", "collection", "list"],
        None,
    )
    .await;
    assert_eq!(
        out.error(1),
        "invalid input: the purpose may only have printable ASCII characters"
    );
    vault.stop().await;
}

#[tokio::test]
async fn vaultctl_unreachable_and_frozen_vaults() {
    // A port nobody listens on: bind one, then let it go.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let out = vaultctl_at(
        &format!("127.0.0.1:{port}"),
        Some(TOKEN),
        &["--json", "collection", "list"],
        None,
    )
    .await;
    let message = out.json_error(1, "connect");
    assert!(message.starts_with("cannot reach the vault: "), "{message}");

    // A vault that accepts the connection but does not answer in time.
    let dir = tempfile::tempdir().unwrap();
    let vault = FreezableVault::start(dir.path(), "eu").await;
    let frozen = vault.freeze().await;
    let out = vaultctl_at(
        &vault.url(),
        Some(TOKEN),
        &["--json", "--timeout", "0.2", "collection", "list"],
        None,
    )
    .await;
    assert_eq!(
        out.json_error(1, "timeout"),
        "deadline exceeded: the vault did not answer in time"
    );
    drop(frozen);
    let out = vaultctl_at(&vault.url(), Some(TOKEN), &["collection", "list"], None).await;
    assert!(out.ok().contains("users"));
    vault.stop().await;
}

#[tokio::test]
async fn vaultctl_reports_tampered_data_as_an_integrity_error() {
    if vault_tests::skip_on_postgres("edits RocksDB directly") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let vault = TestVault::start(dir.path(), "eu").await.unwrap();
    vault.client().await.put(&user("u1", "s1")).await.unwrap();
    let names = crate::tamper::names_of(&vault);
    vault.stop().await;
    {
        let db = open_raw(dir.path());
        let cf = db.cf_handle("records").unwrap();
        let key = crate::tamper::row(&names, "users", "u1");
        let mut stored = StoredRecord::decode(&db.get_cf(cf, &key).unwrap().unwrap())
            .unwrap()
            .0;
        let field = stored
            .fields
            .iter_mut()
            .find(|f| f.name == "email")
            .unwrap();
        field.envelope[20] ^= 0x01;
        db.put_cf(cf, &key, stored.encode()).unwrap();
    }

    let vault = TestVault::start(dir.path(), "eu").await.unwrap();
    let out = vaultctl(&vault, &["get", "users", "u1"]).await;
    assert_eq!(
        out.error(1),
        "integrity check failed: stored data was tampered with or moved"
    );
    let out = vaultctl(&vault, &["--json", "get", "users", "u1"]).await;
    out.json_error(1, "integrity");
    assert!(!out.stdout.contains("example.eu"));
    // The record tag covers the whole record: even an untouched field of a
    // tampered record is not returned.
    let out = vaultctl(&vault, &["get", "users", "u1", "--fields", "country"]).await;
    assert_eq!(
        out.error(1),
        "integrity check failed: stored data was tampered with or moved"
    );
    vault.stop().await;
}

/// The typed client agrees with what vaultctl wrote (and the other way
/// round): one record of every type, written by each.
#[tokio::test]
async fn vaultctl_and_the_client_read_each_others_records() {
    let dir = tempfile::tempdir().unwrap();
    let vault = TestVault::start(dir.path(), "eu").await.unwrap();
    let mut args = vec!["collection", "create", "people"];
    args.extend(PEOPLE_FIELDS);
    args.extend(["--description", "People of the test"]);
    vaultctl(&vault, &args).await.ok();

    let client = VaultClient::builder(vault.addr.to_string())
        .token(TOKEN)
        .purpose("support")
        .connect()
        .await
        .unwrap();
    let record = Record::new("people", "p1", "subject-p1")
        .with("email", "ada@example.eu")
        .with("age", 36i64)
        .with("score", 0.75)
        .with("vip", true)
        .with("photo", vec![0u8, 255, 128])
        .with("born", Timestamp::from_unix_seconds(-4_861_728_000))
        .with("card", "4111111111111111");
    client.put(&record).await.unwrap();
    let got = vaultctl(&vault, &["--json", "get", "people", "p1"])
        .await
        .json();
    assert_eq!(got, vault_client::json::record_to_json(&record));

    // What vaultctl prints reads back in through vaultctl as the same record.
    let data = got["fields"].to_string();
    vaultctl(
        &vault,
        &[
            "put",
            "people",
            "p2",
            "--subject",
            "subject-p1",
            "--data",
            &data,
        ],
    )
    .await
    .ok();
    let mut copy = record.clone();
    copy.id = "p2".into();
    assert_eq!(client.get("people", "p2").await.unwrap(), copy);

    // Also timestamps outside RFC 3339's years 0000 to 9999, which vaultctl
    // takes as integer seconds and prints with a signed year.
    for (seconds, nanos, shown) in [
        (-70_000_000_000, 0, "-249-10-15T19:33:20Z"),
        (253_402_300_800, 0, "+10000-01-01T00:00:00Z"),
        (
            i64::MAX,
            999_999_999,
            "+292277026596-12-04T15:30:07.999999999Z",
        ),
        (i64::MIN, 0, "-292277022657-01-27T08:29:52Z"),
    ] {
        let born = Timestamp { seconds, nanos };
        let record = Record::new("people", "p3", "subject-p3").with("born", born);
        client.put(&record).await.unwrap();
        let got = vaultctl(&vault, &["--json", "get", "people", "p3"])
            .await
            .json();
        assert_eq!(got["fields"], json!({ "born": shown }));
        let data = got["fields"].to_string();
        vaultctl(
            &vault,
            &[
                "put",
                "people",
                "p4",
                "--subject",
                "subject-p3",
                "--data",
                &data,
            ],
        )
        .await
        .ok();
        assert_eq!(
            client.get("people", "p4").await.unwrap().get("born"),
            Some(&Value::Timestamp(born)),
            "{shown}"
        );
    }
    drop(client);
    vault.stop().await;
}

/// Every command's stdout, human or `--json`, success or error, ends with
/// exactly one line break (`Run::ok` checks it for every run of these
/// tests; here each kind of output once, `--json get` and `operator
/// status` among them).
#[tokio::test]
async fn vaultctl_output_ends_with_exactly_one_line_break() {
    let dir = tempfile::tempdir().unwrap();
    let vault = TestVault::start(dir.path(), "eu").await.unwrap();
    let client = vault.client().await;
    client.put(&user("u1", "s1")).await.unwrap();
    drop(client);
    let export = tempfile::tempdir().unwrap();
    let export_dir = export.path().join("export");
    let export_arg = export_dir.to_str().unwrap();
    let key_file = export.path().join("vault.vkey");
    let commands: &[&[&str]] = &[
        &["get", "users", "u1"],
        &["get", "users", "u1", "--fields", "email"],
        &["collection", "list"],
        &["collection", "show", "users"],
        &[
            "put",
            "users",
            "u2",
            "--subject",
            "s2",
            "--data",
            r#"{"country":"FR"}"#,
        ],
        &["delete", "users", "u2"],
        &["delete", "users", "u2"],
        &[
            "policy",
            "check",
            "--principal",
            "dev-root",
            "--purpose",
            "testing",
        ],
        &["audit", "public-key"],
        &["audit", "proof", "0"],
        &["audit", "tail"],
        &["audit", "export", export_arg],
    ];
    for command in commands {
        for json in [true, false] {
            let mut args = Vec::from(*command);
            if json {
                args.insert(0, "--json");
            }
            if command[1] == "export" {
                let _ = std::fs::remove_dir_all(&export_dir);
            }
            let run = vaultctl(&vault, &args).await;
            let stdout = run.ok();
            assert!(!stdout.trim().is_empty(), "{args:?}: {run:?}");
            if json && command[1] != "tail" {
                assert_eq!(stdout.lines().count(), 1, "{args:?}: {run:?}");
                serde_json::from_str::<Json>(stdout).unwrap();
            }
        }
    }

    // Offline verification, both verdicts.
    let key = vaultctl(&vault, &["audit", "public-key"]).await;
    std::fs::write(&key_file, key.ok()).unwrap();
    let verify = ["audit", "verify", export_arg, "--public-key"];
    for json in [true, false] {
        let mut args = Vec::from(verify);
        args.push(key_file.to_str().unwrap());
        if json {
            args.insert(0, "--json");
        }
        vaultctl(&vault, &args).await.ok();
        let events = export_dir.join("events.jsonl");
        let good = std::fs::read_to_string(&events).unwrap();
        std::fs::write(&events, good.replacen("dev-root", "dev-rooT", 1)).unwrap();
        let run = vaultctl(&vault, &args).await;
        std::fs::write(&events, good).unwrap();
        assert_eq!(run.code, Some(1), "{run:?}");
        assert_one_line_break(&run.stdout);
    }

    // Custody, as a custodian: status before init, init (shares on
    // stdout), unseal from stdin, then status, keys, re-wrap status, seal.
    let sealed_dir = tempfile::tempdir().unwrap();
    let custody = TestVault::start_sealed(
        vault_server::vault::OpenOptions::dev(sealed_dir.path(), "eu".parse().unwrap()),
        crate::custody::auth(),
    )
    .await
    .unwrap();
    let url = custody.url();
    let op = |args: Vec<&'static str>, stdin: Option<String>| {
        let url = url.clone();
        async move {
            vaultctl_at(
                &url,
                Some(crate::custody::CUSTODIAN),
                &args,
                stdin.as_deref(),
            )
            .await
        }
    };
    for json in [true, false] {
        let args = if json {
            vec!["--json", "operator", "status"]
        } else {
            vec!["operator", "status"]
        };
        op(args, None).await.ok();
    }
    let init = op(
        vec![
            "--json",
            "operator",
            "init",
            "--shares",
            "1",
            "--threshold",
            "1",
        ],
        None,
    )
    .await;
    let share = init.json()["shares"][0].as_str().unwrap().to_owned();
    op(vec!["operator", "unseal"], Some(format!("{share}\n")))
        .await
        .ok();
    for command in [
        &["operator", "status"][..],
        &["operator", "keys"],
        &["operator", "rewrap-status"],
        &["operator", "reindex-status"],
    ] {
        for json in [true, false] {
            let mut args = Vec::from(command);
            if json {
                args.insert(0, "--json");
            }
            let run = op(args, None).await;
            assert!(!run.ok().trim().is_empty(), "{run:?}");
        }
    }
    op(vec!["operator", "seal"], None).await.ok();
    op(vec!["operator", "unseal"], Some(share.clone()))
        .await
        .ok();
    op(vec!["--json", "operator", "seal"], None).await.json();
    custody.stop().await;

    // Errors: a vault error and a usage error, each with --json (a JSON
    // body on stdout) and without (nothing on stdout).
    for args in [&["get", "users", "nobody"][..], &["get", "users"]] {
        let run = vaultctl(&vault, args).await;
        assert_eq!(run.stdout, "", "{run:?}");
        assert!(run.stderr.ends_with('\n') && !run.stderr.ends_with("\n\n"));
        let mut json = vec!["--json"];
        json.extend(args);
        let run = vaultctl(&vault, &json).await;
        assert!(matches!(run.code, Some(1 | 2)), "{run:?}");
        assert_one_line_break(&run.stdout);
        serde_json::from_str::<Json>(&run.stdout).unwrap();
    }
    vault.stop().await;
}
