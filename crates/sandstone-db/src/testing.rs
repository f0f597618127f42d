//! Scratch databases for tests (this crate's, and other crates' with the
//! `testing` feature). `SANDSTONE_TEST_DATABASE_URL` names a PostgreSQL
//! server by an admin URL (`scripts/postgres.sh` prints one); each
//! [`TestDatabase`] is a fresh `sst_<random>` database on it, dropped when
//! the value is. Without the variable, tests keep their data in SQLite.

use crate::{Database, Location, PgUrl};
use sqlx::{AssertSqlSafe, Connection, PgConnection};
use std::sync::Arc;

/// The admin URL of the server tests make their databases on.
pub const ENV: &str = "SANDSTONE_TEST_DATABASE_URL";

/// A database of its own on the test server, dropped with this value.
pub struct TestDatabase {
    admin: PgUrl,
    name: String,
    url: PgUrl,
    /// The URL with its password, for a daemon's `--database-url`.
    url_string: String,
}

impl TestDatabase {
    /// A fresh database, or `None` when [`ENV`] is not set.
    pub async fn create() -> Option<TestDatabase> {
        let admin_string = std::env::var(ENV).ok()?;
        let admin: PgUrl = admin_string.parse().expect(ENV);
        let name = format!(
            "sst_{}",
            hex::encode(crate::secrets::random::<8>().expect("random"))
        );
        let mut conn = PgConnection::connect_with(&admin.options)
            .await
            .unwrap_or_else(|e| panic!("{ENV} ({admin}): {}", admin.scrub(e.to_string())));
        // The name is ours (hex), never input.
        sqlx::raw_sql(AssertSqlSafe(format!("CREATE DATABASE {name}")))
            .execute(&mut conn)
            .await
            .expect("CREATE DATABASE");
        let _ = conn.close().await;
        let mut url = url::Url::parse(&admin_string).expect(ENV);
        url.set_path(&name);
        Some(TestDatabase {
            url: url.as_str().parse().expect("the test database's URL"),
            url_string: url.into(),
            admin,
            name,
        })
    }

    pub fn url(&self) -> &PgUrl {
        &self.url
    }

    /// The URL with its password, as a daemon is given it.
    pub fn url_string(&self) -> &str {
        &self.url_string
    }
}

impl Drop for TestDatabase {
    /// Drops the database (forcing its connections closed), best effort:
    /// on a thread of its own, since the test's runtime may be the one
    /// dropping this.
    fn drop(&mut self) {
        let (admin, name) = (self.admin.options.clone(), self.name.clone());
        let dropped = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            rt.block_on(async {
                let mut conn = PgConnection::connect_with(&admin).await?;
                sqlx::raw_sql(AssertSqlSafe(format!(
                    "DROP DATABASE IF EXISTS {name} WITH (FORCE)"
                )))
                .execute(&mut conn)
                .await?;
                conn.close().await
            })
            .map_err(std::io::Error::other)
        });
        if let Ok(Err(e)) = dropped.join() {
            eprintln!("test database {} not dropped: {e}", self.url);
        }
    }
}

/// Where another crate's test keeps its data: a fresh PostgreSQL database
/// when [`ENV`] is set (the second pass of `scripts/test.sh`), else a
/// SQLite file in a temporary directory.
pub enum Scratch {
    Sqlite(tempfile::TempDir),
    Postgres(TestDatabase),
}

impl Scratch {
    pub async fn new() -> Scratch {
        match TestDatabase::create().await {
            Some(db) => Scratch::Postgres(db),
            None => Scratch::Sqlite(tempfile::tempdir().expect("a temporary directory")),
        }
    }

    pub fn location(&self) -> Location {
        match self {
            Scratch::Sqlite(dir) => Location::Sqlite(dir.path().join("sandstone.db")),
            Scratch::Postgres(db) => Location::Postgres(db.url.clone()),
        }
    }

    /// Opens it (again, after a simulated restart, with what was stored).
    pub async fn open(&self) -> Arc<dyn Database> {
        let location = self.location();
        location
            .open()
            .await
            .unwrap_or_else(|e| panic!("open {location}: {e}"))
    }
}
