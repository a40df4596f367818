//! The runner lock (PostgreSQL): a single server excludes everyone,
//! replicas share it, another server's sessions still connected are waited
//! for and then refused, and a lock whose connection was cut is taken back
//! — or, when another server took it meanwhile, the holder is told to stop.

use crate::harness::on_empty_database;
use jobvisor::{
    domain::Runner,
    store::postgres::{
        PgConfig,
        runner_lock::{RUNNER_LOCK_KEY, RunnerLock, RunnerLockError, RunnerMode, application_name},
    },
};
use sqlx::{ConnectOptions, Connection, PgConnection, postgres::PgConnectOptions};
use std::{str::FromStr, time::Duration};

fn server(host: &str) -> Runner {
    Runner {
        server: host.into(),
        host: host.into(),
        pid: 4242,
        since: chrono::Utc::now(),
    }
}

fn config(url: &str, mode: RunnerMode, host: &str) -> PgConfig {
    let mut config = PgConfig::new(url);
    config.application_name = application_name(mode, &server(host));
    config
}

/// A plain session named like a server's (no lock taken).
async fn session(url: &str, name: &str) -> PgConnection {
    PgConnectOptions::from_str(url)
        .unwrap()
        .application_name(name)
        .connect()
        .await
        .unwrap()
}

fn refused(result: Result<RunnerLock, RunnerLockError>) -> RunnerLockError {
    match result {
        Ok(_) => panic!("the runner lock was granted"),
        Err(e) => e,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_a_single_server_excludes_everyone_and_replicas_share_the_lock() {
    on_empty_database(|url| async move {
        let single = RunnerLock::acquire(
            &config(&url, RunnerMode::Single, "alone"),
            RunnerMode::Single,
        )
        .await
        .unwrap();
        let replica = refused(
            RunnerLock::acquire(
                &config(&url, RunnerMode::Replica, "r1"),
                RunnerMode::Replica,
            )
            .await,
        );
        assert!(matches!(replica, RunnerLockError::Held { .. }), "{replica}");
        let text = replica.to_string();
        assert!(text.contains("without --multi-replica"), "{text}");
        assert!(text.contains("jobvisor serve 4242@alone"), "{text}");
        let second = refused(
            RunnerLock::acquire(&config(&url, RunnerMode::Single, "two"), RunnerMode::Single).await,
        );
        assert!(
            second
                .to_string()
                .contains("another jobvisor server already runs the jobs"),
            "{second}"
        );
        drop(single);

        let _r1 = RunnerLock::acquire(
            &config(&url, RunnerMode::Replica, "r1"),
            RunnerMode::Replica,
        )
        .await
        .unwrap();
        let _r2 = RunnerLock::acquire(
            &config(&url, RunnerMode::Replica, "r2"),
            RunnerMode::Replica,
        )
        .await
        .unwrap();
        let text = refused(
            RunnerLock::acquire(
                &config(&url, RunnerMode::Single, "alone"),
                RunnerMode::Single,
            )
            .await,
        )
        .to_string();
        assert!(
            text.contains("jobvisor replica 4242@r1") && text.contains("jobvisor replica 4242@r2"),
            "{text}"
        );
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_another_server_s_sessions_still_connected_are_refused_after_a_grace() {
    on_empty_database(|url| async move {
        // A server whose lock connection dropped while its pool still works.
        let ghost = session(&url, "jobvisor serve 77@ghost 2026-12-07T01:47:02Z").await;
        let text = refused(
            RunnerLock::acquire(&config(&url, RunnerMode::Single, "new"), RunnerMode::Single).await,
        )
        .to_string();
        assert!(text.contains("still connected"), "{text}");
        assert!(text.contains("77@ghost"), "{text}");
        // Replicas do not mind each other's sessions; the refusal gave the
        // lock back.
        let peer = session(&url, "jobvisor replica 78@peer 2026-12-07T01:47:02Z").await;
        ghost.close().await.unwrap();
        let lock =
            RunnerLock::acquire(&config(&url, RunnerMode::Replica, "r"), RunnerMode::Replica)
                .await
                .unwrap();
        drop((lock, peer));
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_a_cut_lock_connection_is_taken_back_or_the_server_is_told_to_stop() {
    on_empty_database(|url| async move {
        let config = config(&url, RunnerMode::Single, "holder");
        let name = config.application_name.clone();
        let lock = RunnerLock::acquire(&config, RunnerMode::Single)
            .await
            .unwrap();
        let mut held = tokio::spawn(lock.hold());
        let mut admin = PgConnection::connect(&url).await.unwrap();
        let terminate = "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
                         WHERE application_name = $1";
        let holds = "SELECT count(*) FROM pg_locks AS l JOIN pg_stat_activity AS a \
                     ON a.pid = l.pid WHERE l.locktype = 'advisory' AND l.granted \
                     AND l.objid = ($1 & 4294967295)::oid AND a.application_name = $2";

        // Cut: taken back within a few seconds, by the same server.
        sqlx::query(terminate)
            .bind(&name)
            .execute(&mut admin)
            .await
            .unwrap();
        let back = async {
            loop {
                tokio::time::sleep(Duration::from_millis(100)).await;
                let n: i64 = sqlx::query_scalar(holds)
                    .bind(RUNNER_LOCK_KEY)
                    .bind(&name)
                    .fetch_one(&mut admin)
                    .await
                    .unwrap();
                if n == 1 {
                    break;
                }
            }
        };
        tokio::time::timeout(Duration::from_secs(10), back)
            .await
            .expect("the lock is taken back");
        assert!(!held.is_finished());

        // Cut again, and another server takes the lock first: told to stop.
        let mut other = session(&url, "jobvisor serve 99@usurper 2026-12-07T01:47:02Z").await;
        sqlx::query(terminate)
            .bind(&name)
            .execute(&mut admin)
            .await
            .unwrap();
        let took = async {
            loop {
                let taken: bool = sqlx::query_scalar("SELECT pg_try_advisory_lock($1)")
                    .bind(RUNNER_LOCK_KEY)
                    .fetch_one(&mut other)
                    .await
                    .unwrap();
                if taken {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        };
        tokio::time::timeout(Duration::from_secs(5), took)
            .await
            .expect("the other takes the lock");
        let stop = tokio::time::timeout(Duration::from_secs(15), &mut held)
            .await
            .expect("the holder is told to stop")
            .unwrap();
        assert!(matches!(stop, RunnerLockError::Held { .. }), "{stop}");
        assert!(stop.to_string().contains("99@usurper"), "{stop}");
    })
    .await;
}
