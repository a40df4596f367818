//! Fresh PostgreSQL databases for tests and benchmarks, on the server that
//! `DATABASE_URL` names (default: the local one). A suite that cannot reach
//! it fails and says how to start it: it never passes silently.

use sqlx::{Connection, Executor, PgConnection};
use std::{
    sync::Mutex,
    time::{SystemTime, UNIX_EPOCH},
};

/// Where the tests find PostgreSQL: `DATABASE_URL`, or the local default.
pub fn admin_url() -> String {
    std::env::var("DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into())
}

/// `url` pointing at database `db` instead (query string kept).
pub fn with_database(url: &str, db: &str) -> String {
    let (base, query) = match url.split_once('?') {
        Some((b, q)) => (b, format!("?{q}")),
        None => (url, String::new()),
    };
    let root = base.rsplit_once('/').map(|(r, _)| r).unwrap_or(base);
    format!("{root}/{db}{query}")
}

/// Connects to the admin database, or panics saying how to start
/// PostgreSQL.
pub async fn admin() -> PgConnection {
    let url = admin_url();
    match PgConnection::connect(&url).await {
        Ok(c) => c,
        Err(e) => panic!(
            "PostgreSQL is not reachable at {url} ({e}).\n\
             Start it with: pg_ctlcluster --skip-systemctl-redirect $(ls /etc/postgresql) main start\n\
             or point DATABASE_URL at a running server."
        ),
    }
}

fn unix_seconds() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// A database created for one test, named `<prefix><unix seconds>_<random>`
/// so that [`TestDb::create`] can drop those a dead run left behind.
#[derive(Debug, Clone)]
pub struct TestDb {
    pub name: String,
    pub url: String,
}

impl TestDb {
    /// Creates an empty database (not migrated), named `jv_test_…`.
    pub async fn create() -> TestDb {
        TestDb::create_with_prefix("jv_test_").await
    }

    /// Creates an empty database (not migrated), named `<prefix>…`.
    pub async fn create_with_prefix(prefix: &str) -> TestDb {
        let mut admin = admin().await;
        sweep_stale(&mut admin, prefix).await;
        let name = format!(
            "{prefix}{}_{}",
            unix_seconds(),
            &uuid::Uuid::new_v4().simple().to_string()[..8]
        );
        admin
            .execute(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
            .await
            .expect("create the test database");
        TestDb {
            url: with_database(&admin_url(), &name),
            name,
        }
    }

    /// Drops the database, closing the sessions still on it; a failure is
    /// left for the next run's sweep.
    pub async fn drop_db(&self) {
        let _ = self.try_drop().await;
    }

    /// Drops the database, closing the sessions still on it.
    pub async fn try_drop(&self) -> Result<(), sqlx::Error> {
        let mut admin = admin().await;
        admin
            .execute(sqlx::AssertSqlSafe(format!(
                "DROP DATABASE IF EXISTS {} WITH (FORCE)",
                self.name
            )))
            .await
            .map(|_| ())
    }
}

/// Drops the databases of this prefix left by runs that died more than an
/// hour ago, once per prefix and process.
async fn sweep_stale(admin: &mut PgConnection, prefix: &str) {
    static SWEPT: Mutex<Vec<String>> = Mutex::new(Vec::new());
    {
        let mut swept = SWEPT.lock().unwrap_or_else(|e| e.into_inner());
        if swept.iter().any(|p| p == prefix) {
            return;
        }
        swept.push(prefix.to_string());
    }
    let names: Vec<String> = sqlx::query_scalar("SELECT datname FROM pg_database")
        .fetch_all(&mut *admin)
        .await
        .unwrap_or_default();
    let now = unix_seconds();
    for name in names {
        let born: Option<u64> = name
            .strip_prefix(prefix)
            .and_then(|rest| rest.split('_').next())
            .and_then(|s| s.parse().ok());
        if born.is_some_and(|b| now.saturating_sub(b) > 3600) {
            let _ = admin
                .execute(sqlx::AssertSqlSafe(format!(
                    "DROP DATABASE IF EXISTS {name} WITH (FORCE)"
                )))
                .await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::with_database;

    #[test]
    fn with_database_keeps_the_query() {
        assert_eq!(
            with_database("postgres://u@h:5432/postgres?sslmode=disable", "x"),
            "postgres://u@h:5432/x?sslmode=disable"
        );
        assert_eq!(
            with_database("postgres://u@h/postgres", "y"),
            "postgres://u@h/y"
        );
    }
}
