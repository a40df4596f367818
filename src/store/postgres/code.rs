//! The PL/pgSQL functions the store calls, kept as code: one file each
//! under `sql/`, applied at start-up after the migrations and under the
//! same lock, so that migrations hold schema changes only and what the
//! database runs today is read in `sql/`, not by reading the migrations in
//! order. (Migrations up to 0014 still define these functions the way they
//! were then; applying the files over them changes nothing, which
//! `tests/store_conformance/postgres_code.rs` checks.)
//!
//! The database keeps the version it holds (`jobvisor_code`, migration
//! 0017). A server applies its files when its [`VERSION`] is newer, or the
//! same with other contents (a development build); an older server leaves
//! a newer one's functions alone. Change a file, bump [`VERSION`]: a unit
//! test below fails until [`DIGEST`] is the files' digest again.

use sha2::{Digest, Sha256};
use sqlx::PgConnection;

/// The functions' files, in the order they are applied.
pub const FILES: &[(&str, &str)] = &[
    ("write_batch.sql", include_str!("sql/write_batch.sql")),
    (
        "write_batch_fenced.sql",
        include_str!("sql/write_batch_fenced.sql"),
    ),
    (
        "write_successes.sql",
        include_str!("sql/write_successes.sql"),
    ),
    ("transition.sql", include_str!("sql/transition.sql")),
    ("job_changed.sql", include_str!("sql/job_changed.sql")),
    (
        "items_job_exists.sql",
        include_str!("sql/items_job_exists.sql"),
    ),
    ("jobs_deleted.sql", include_str!("sql/jobs_deleted.sql")),
    ("job_id_kept.sql", include_str!("sql/job_id_kept.sql")),
    (
        "item_job_exists.sql",
        include_str!("sql/item_job_exists.sql"),
    ),
];

/// The functions' version: bumped with every change to a file in `sql/`.
pub const VERSION: i32 = 4;

/// The SHA-256 of [`FILES`] at [`VERSION`] (hex), as [`digest`] computes it.
pub const DIGEST: &str = "4ed58b58a2efd61029d2431c6781b51d469bc50aca5736d50615e0dd8a418549";

/// The SHA-256 (hex) of the files' names and contents.
pub fn digest() -> String {
    let mut hash = Sha256::new();
    for (name, text) in FILES {
        hash.update(name.as_bytes());
        hash.update([0]);
        hash.update(text.as_bytes());
        hash.update([0]);
    }
    hash.finalize().iter().map(|b| format!("{b:02x}")).collect()
}

/// What [`apply`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Applied {
    /// The database held these functions already.
    Current,
    /// The files were applied (over `from`, the version held before).
    Updated { from: Option<i32> },
    /// The database holds a newer server's functions: left as they are.
    Newer { held: i32 },
}

/// Applies the files in one transaction, unless the database holds them or
/// newer ones. The caller holds the schema lock (see `PgStore::migrate`).
pub async fn apply(conn: &mut PgConnection) -> Result<Applied, sqlx::Error> {
    let digest = digest();
    let held: Option<(i32, String)> = sqlx::query_as("SELECT version, digest FROM jobvisor_code")
        .fetch_optional(&mut *conn)
        .await?;
    match &held {
        Some((version, _)) if *version > VERSION => {
            return Ok(Applied::Newer { held: *version });
        }
        Some((version, held_digest)) if *version == VERSION && *held_digest == digest => {
            return Ok(Applied::Current);
        }
        _ => {}
    }
    let mut tx = sqlx::Connection::begin(&mut *conn).await?;
    for (_, text) in FILES {
        sqlx::raw_sql(*text).execute(&mut *tx).await?;
    }
    sqlx::query(
        "INSERT INTO jobvisor_code (version, digest) VALUES ($1, $2)
         ON CONFLICT (singleton) DO UPDATE
         SET version = EXCLUDED.version, digest = EXCLUDED.digest, applied_at = now()",
    )
    .bind(VERSION)
    .bind(&digest)
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(Applied::Updated {
        from: held.map(|(version, _)| version),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_digest_is_recorded_for_this_version() {
        assert_eq!(
            digest(),
            DIGEST,
            "a file in src/store/postgres/sql/ changed: bump code::VERSION and set \
             code::DIGEST to the new digest"
        );
    }

    #[test]
    fn every_file_replaces_its_functions() {
        for (name, text) in FILES {
            assert!(
                !text.contains("CREATE FUNCTION"),
                "{name}: use CREATE OR REPLACE FUNCTION, so that the file applies again"
            );
            assert!(
                text.contains("CREATE OR REPLACE FUNCTION"),
                "{name}: no function"
            );
        }
    }
}
