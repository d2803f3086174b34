//! Writes a record into the dev server's seeded `users` collection, reads it
//! back with a projection, and deletes it.
//!
//! ```text
//! VAULT_TOKEN=... cargo run -p vault-client --example quickstart
//! ```
//!
//! Reads `VAULT_ADDR` (default `http://127.0.0.1:8200`), `VAULT_TOKEN`
//! (required) and `VAULT_PURPOSE` (default `quickstart`). It creates no
//! collection: `users` (email, name, phone, birth_date, country) must exist.

use std::error::Error;
use std::time::{SystemTime, UNIX_EPOCH};

use vault_client::{Record, Timestamp, VaultClient};

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn Error>> {
    let addr = std::env::var("VAULT_ADDR").unwrap_or_else(|_| "http://127.0.0.1:8200".into());
    let token = std::env::var("VAULT_TOKEN").map_err(|_| "set VAULT_TOKEN to a vault token")?;
    let purpose = std::env::var("VAULT_PURPOSE").unwrap_or_else(|_| "quickstart".into());

    let vault = VaultClient::builder(addr)
        .token(token)
        .purpose(purpose)
        .connect()
        .await?;
    println!("connected: {vault:?}");

    // A fresh id, so runs never collide.
    let nanos = SystemTime::now().duration_since(UNIX_EPOCH)?.as_nanos();
    let id = format!("quickstart-{}-{nanos}", std::process::id());

    let record = Record::new("users", id.as_str(), "subject-quickstart")
        .with("email", "ada@example.eu")
        .with("name", "Ada Lovelace")
        .with("phone", "+44 20 7946 0000")
        .with("birth_date", "1990-05-17T00:00:00Z".parse::<Timestamp>()?)
        .with("country", "GB");
    vault.put(&record).await?;
    println!("stored users/{id}");

    // Only the projected fields are decrypted and returned.
    let back = vault
        .get_fields("users", &id, &["email", "country"])
        .await?;
    println!("read users/{id} (subject {}):", back.subject_id);
    for (field, value) in &back.fields {
        println!("  {field}: {value}");
    }
    assert_eq!(back.get("email"), record.get("email"));
    assert!(back.get("name").is_none(), "name was not projected");

    let deleted = vault.delete("users", &id).await?;
    println!("deleted users/{id}: {deleted}");
    Ok(())
}
