//! Region binding: a keyring of one region is refused by a server of another,
//! and ciphertext copied into another region's vault does not decrypt.
//!
//! That vault has other keys as well, so the copy would fail even without
//! any region binding. The binding itself — the very same keys under
//! another region label refuse the ciphertext, under its own label they
//! read it — is shown in process, where a keyring can be relabelled:
//! `vault-server/src/engine/tests.rs`,
//! `the_same_keys_under_another_region_label_do_not_decrypt`.

use vault_client::Error;
use vault_server::storage::Table;
use vault_server::vault::{OpenOptions, Vault};
use vault_tests::TestVault;

use crate::tamper::{key_row, names_of, open_raw, row};
use crate::user;

#[tokio::test]
async fn a_us_server_refuses_an_eu_folder() {
    let dir = tempfile::tempdir().unwrap();
    let vault = TestVault::start(dir.path(), "eu").await.unwrap();
    vault.client().await.put(&user("u1", "s1")).await.unwrap();
    vault.stop().await;

    let opts =
        vault_tests::on_test_backend(OpenOptions::dev(dir.path(), "us".parse().unwrap())).await;
    let err = Vault::open(opts).unwrap_err();
    let msg = err.to_string();
    assert!(
        msg.contains("bound to region eu") && msg.contains("configured for region us"),
        "{msg}"
    );

    // The eu folder still opens as eu.
    let vault = TestVault::start(dir.path(), "eu").await.unwrap();
    assert_eq!(
        vault.client().await.get("users", "u1").await.unwrap(),
        user("u1", "s1")
    );
    vault.stop().await;
}

#[tokio::test]
async fn ciphertext_copied_to_another_region_does_not_decrypt() {
    if vault_tests::skip_on_postgres("copies rows between RocksDB folders") {
        return;
    }
    let eu_dir = tempfile::tempdir().unwrap();
    let us_dir = tempfile::tempdir().unwrap();
    let eu = TestVault::start(eu_dir.path(), "eu").await.unwrap();
    eu.client().await.put(&user("u1", "s1")).await.unwrap();
    let eu_names = names_of(&eu);
    eu.stop().await;
    let us = TestVault::start(us_dir.path(), "us").await.unwrap();
    let us_names = names_of(&us);
    us.stop().await;

    // Rows are stored under names only each vault's keyring computes, so
    // a plain copy is not even found (no row of the us vault's names).
    // Copy the record and its subject's wrapped key to the rows the us
    // vault looks up for the same ids: they still do not decrypt.
    {
        let src = open_raw(eu_dir.path());
        let dst = open_raw(us_dir.path());
        for (table, from, to) in [
            (
                Table::Records,
                row(&eu_names, "users", "u1"),
                row(&us_names, "users", "u1"),
            ),
            (
                Table::SubjectKeys,
                key_row(&eu_names, "s1", 1),
                key_row(&us_names, "s1", 1),
            ),
        ] {
            let (s, d) = (
                src.cf_handle(table.name()).unwrap(),
                dst.cf_handle(table.name()).unwrap(),
            );
            let value = src.get_cf(s, from).unwrap().unwrap();
            dst.put_cf(d, to, value).unwrap();
        }
    }
    let us = TestVault::start(us_dir.path(), "us").await.unwrap();
    let got = us.client().await.get("users", "u1").await;
    assert!(matches!(got, Err(Error::Integrity)), "{got:?}");
    us.stop().await;
}

#[tokio::test]
async fn a_collection_of_another_region_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let vault = TestVault::start(dir.path(), "eu").await.unwrap();
    let client = vault.client().await;
    let mut c = crate::all_types("us_things");
    c.region = "us".into();
    let got = client.create_collection(&c).await;
    assert!(
        matches!(got, Err(Error::FailedPrecondition(ref m)) if m.contains("region us")),
        "{got:?}"
    );
    drop(client);
    vault.stop().await;
}
