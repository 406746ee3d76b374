//! PostgreSQL's counterpart of CockroachDB's `disable_changefeed_replication`,
//! through the real pipeline: the purger's sessions take a replication
//! origin of a pool, and the PostgreSQL changefeed leaves out the
//! transactions of that pool (`filter_origins`). So a purge does not come
//! back through the changefeed as delete events, and the archive's delete
//! files hold the application's deletes only.
//!
//! Every test uses an origin pool of its own (origins are cluster-wide, and
//! other tests' purgers use the default pool) and drops it at the end.

mod common;

use std::time::Duration;

use cdc_common::ident::quote_ident;
use cdc_purger::{OriginSetup, PurgerConfig};
use common::Pipeline;

const TABLE: &str = "CREATE TABLE {t} (id bigint PRIMARY KEY, created timestamptz NOT NULL,
       payload text NOT NULL, archived bool NOT NULL DEFAULT false);
     ALTER TABLE {t} REPLICA IDENTITY FULL;";

/// A pipeline whose changefeed leaves out the origin pool `base`, and 300
/// rows: ids 1..=200 created ten days ago, marked and archived, 201..=300
/// today (never marked).
async fn archived_pipeline(prefix: &str, base: &str) -> Pipeline {
    let p = Pipeline::start_with(prefix, TABLE, 2, 50, |feed| {
        feed.filter_origins = vec![base.to_owned()];
    })
    .await;
    p.client
        .batch_execute(&format!(
            "INSERT INTO {t} (id, created, payload)
               SELECT g, CASE WHEN g <= 200 THEN now() - interval '10 days' ELSE now() END, 'row ' || g
               FROM generate_series(1, 300) g",
            t = p.qt
        ))
        .await
        .unwrap();
    let mark = p.mark(&p.marker("created", "1 day", 50)).await;
    assert_eq!(mark.rows_marked, 200);
    p.wait_archived(p.db_now().await).await;
    p
}

/// A purger for the pipeline's table taking origins of the pool `base`.
fn purger(p: &Pipeline, base: &str, batch_size: u32) -> PurgerConfig {
    let mut cfg = p.purger(batch_size);
    cfg.replication_origin = base.to_owned();
    cfg.replication_origin_pool = 3;
    cfg
}

fn pool(base: &str, n: u32) -> Vec<String> {
    (0..n)
        .map(|i| cdc_common::db::origin_pool_member(base, i))
        .collect()
}

/// The application deletes one unmarked row, then everything is archived.
async fn application_delete(p: &Pipeline, id: i64) {
    p.client
        .execute(&format!("DELETE FROM {} WHERE id = $1", p.qt), &[&id])
        .await
        .unwrap();
    p.wait_archived(p.db_now().await).await;
}

/// After a purge the sink records no delete event for the purged rows
/// (counts and delete files), while an application DELETE of another row
/// of the same table is recorded. Another purger session holds the pool's
/// first origin meanwhile, so the purge takes the second: two sessions at
/// once, each with its own origin, both left out.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn purged_rows_do_not_come_back_as_deletes_but_application_deletes_do() {
    let base = cdc_tests::unique("cdc_pp_origin");
    let p = archived_pipeline("pp_origin", &base).await;
    let cfg = purger(&p, &base, 40);

    let holder = cdc_purger::open_session(&cfg, cdc_purger::SessionUse::Purge)
        .await
        .unwrap();
    assert_eq!(holder.origin, Some(OriginSetup::Taken(base.clone())));
    let summary = p.purge(&cfg).await;
    assert!(summary.ok(), "{}", summary.render());
    assert_eq!(summary.totals.deleted, 200, "{}", summary.render());
    assert_eq!(summary.replication_origins, [format!("{base}_1")]);
    assert!(summary.replication_origin_warnings.is_empty());
    // The holder's own deletes are left out too.
    holder
        .client
        .execute(&format!("DELETE FROM {} WHERE id = 300", p.qt), &[])
        .await
        .unwrap();
    drop(holder);
    application_delete(&p, 250).await;

    assert_eq!(p.count("true").await, 98);
    let (counted, keys) = p.recorded_deletes().await;
    assert_eq!(
        keys,
        ["[250]"],
        "only the application's delete is in the delete files"
    );
    assert_eq!(
        counted, 1,
        "checkpoints count only the application's delete"
    );
    p.stop().await;
    common::drop_origins(&cdc_tests::pg().await, &pool(&base, 3)).await;
}

/// A purger whose connection is terminated mid-run reconnects, and the new
/// session takes an origin of the pool again (the first one, or the next if
/// the old backend has not exited yet): none of the purge's deletes is
/// recorded, before or after the reconnect.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_reconnected_purger_session_takes_an_origin_again() {
    let base = cdc_tests::unique("cdc_pp_origin");
    let p = archived_pipeline("pp_origin_re", &base).await;
    let mut cfg = purger(&p, &base, 10);
    cfg.batching.min_batch_size = 5;
    cfg.pipeline_depth = 1;
    cfg.batching.max_rows_per_second = Some(100);

    let purge = tokio::spawn({
        let (cfg, archive) = (cfg.clone(), p.archive.clone());
        async move {
            cdc_purger::purge(
                &cfg,
                &archive,
                tokio_util::sync::CancellationToken::new(),
                &cdc_purger::PurgeOptions::default(),
            )
            .await
        }
    });
    // Once some rows are gone, the purger's backend is terminated.
    p.until("the purge's first batches", || async {
        p.count("archived").await <= 180
    })
    .await;
    // Its session is the one whose last statement names the table (between
    // checkpoints it may be reading the current xid instead: look again).
    let pattern = format!("%{}%", p.table);
    p.until("the purger's session, terminated", || async {
        let terminated: i64 = p
            .client
            .query_one(
                "SELECT count(*) FILTER (WHERE pg_terminate_backend(pid)) FROM pg_stat_activity \
                 WHERE application_name = 'cdc-archiver-purge' AND query LIKE $1",
                &[&pattern],
            )
            .await
            .unwrap()
            .get(0);
        assert!(terminated <= 1, "one purger session");
        terminated == 1
    })
    .await;
    let summary = tokio::time::timeout(common::LIMIT, purge)
        .await
        .expect("the purge ends")
        .unwrap()
        .expect("the purge survives the lost session");
    assert!(summary.ok(), "{}", summary.render());
    assert!(summary.retries >= 1, "{}", summary.render());
    assert_eq!(
        summary.totals.deleted + summary.totals.already_gone,
        200,
        "{}",
        summary.render()
    );
    assert_eq!(
        summary.replication_origins.len(),
        2,
        "one origin per session: {:?}",
        summary.replication_origins
    );
    assert_eq!(summary.replication_origins[0], base);
    assert!(
        pool(&base, 3).contains(&summary.replication_origins[1]),
        "{:?}",
        summary.replication_origins
    );
    assert!(summary.replication_origin_warnings.is_empty());
    application_delete(&p, 250).await;

    assert_eq!(p.count("true").await, 99);
    let (counted, keys) = p.recorded_deletes().await;
    assert_eq!(keys, ["[250]"]);
    assert_eq!(counted, 1);
    p.stop().await;
    common::drop_origins(&cdc_tests::pg().await, &pool(&base, 3)).await;
}

/// Sessions take the pool's origins in order; once every one is active
/// elsewhere, a session goes on without one and says so (its deletes would
/// reach the changefeed), and a freed origin is taken again.
#[tokio::test]
async fn concurrent_sessions_take_the_pool_in_order_and_an_exhausted_pool_warns() {
    let base = cdc_tests::unique("cdc_pp_origin");
    let mut cfg = PurgerConfig::new(cdc_common::ident::TableName::parse("unused").unwrap());
    cfg.database_url = cdc_tests::pg_url();
    cfg.replication_origin = base.clone();
    cfg.replication_origin_pool = 2;

    let a = cdc_purger::open_session(&cfg, cdc_purger::SessionUse::Purge)
        .await
        .unwrap();
    let b = cdc_purger::open_session(&cfg, cdc_purger::SessionUse::Purge)
        .await
        .unwrap();
    assert_eq!(a.origin, Some(OriginSetup::Taken(base.clone())));
    assert_eq!(b.origin, Some(OriginSetup::Taken(format!("{base}_1"))));
    for s in [&a, &b] {
        let set: bool = s
            .client
            .query_one("SELECT pg_replication_origin_session_is_setup()", &[])
            .await
            .unwrap()
            .get(0);
        assert!(set);
    }
    let c = cdc_purger::open_session(&cfg, cdc_purger::SessionUse::Purge)
        .await
        .unwrap();
    let Some(OriginSetup::Missing(why)) = &c.origin else {
        panic!("a third session in a pool of two: {:?}", c.origin);
    };
    assert!(
        why.contains("is active in another session") && why.contains("replication_origin_pool"),
        "{why}"
    );
    c.client.query_one("SELECT 1", &[]).await.unwrap();

    // A dry run creates and takes nothing.
    let mut dry = cfg.clone();
    dry.replication_origin = cdc_tests::unique("cdc_pp_origin");
    let d = cdc_purger::open_session(&dry, cdc_purger::SessionUse::DryRun)
        .await
        .unwrap();
    assert_eq!(d.origin, Some(OriginSetup::Checked));
    let admin = cdc_tests::pg().await;
    let created: i64 = admin
        .query_one(
            "SELECT count(*) FROM pg_replication_origin WHERE roname = $1",
            &[&dry.replication_origin],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(created, 0);

    // The first origin is taken again once its session is gone.
    drop(a);
    let start = std::time::Instant::now();
    loop {
        let again = cdc_purger::open_session(&cfg, cdc_purger::SessionUse::Purge)
            .await
            .unwrap();
        if again.origin == Some(OriginSetup::Taken(base.clone())) {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "{:?}",
            again.origin
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    drop((b, c, d));
    common::drop_origins(&admin, &pool(&base, 2)).await;
}

/// A role that may not use replication origins purges anyway, with a
/// warning that names the two GRANTs (or `disable_changefeed_replication =
/// false`); its deletes then reach the changefeed and are recorded. Once
/// those GRANTs are given, the same role takes an origin and its next
/// purge's deletes are left out.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn without_the_privilege_the_purge_warns_and_goes_on_and_the_named_grants_fix_it() {
    let base = cdc_tests::unique("cdc_pp_origin");
    let p = archived_pipeline("pp_origin_priv", &base).await;
    let role = cdc_tests::unique("cdc_pp_role");
    let qr = quote_ident(&role);
    p.client
        .batch_execute(&format!(
            "CREATE ROLE {qr} LOGIN; GRANT SELECT, DELETE ON {} TO {qr};",
            p.qt
        ))
        .await
        .unwrap();
    let mut cfg = purger(&p, &base, 40);
    cfg.database_url = common::pg_url_as(&role);

    // Dry run: the same warning, nothing created.
    let dry = cdc_purger::purge(
        &cfg,
        &p.archive,
        tokio_util::sync::CancellationToken::new(),
        &cdc_purger::PurgeOptions {
            dry_run: true,
            ..Default::default()
        },
    )
    .await
    .unwrap();
    assert_eq!(dry.totals.would_delete, 200);
    assert_eq!(dry.replication_origin_warnings.len(), 1, "{}", dry.render());

    let first = p.purge(&cfg).await;
    assert!(first.ok(), "{}", first.render());
    assert_eq!(first.totals.deleted, 200);
    assert!(first.replication_origins.is_empty());
    let grants = [
        format!("GRANT EXECUTE ON FUNCTION pg_catalog.pg_replication_origin_create(text) TO {qr};"),
        format!(
            "GRANT EXECUTE ON FUNCTION pg_catalog.pg_replication_origin_session_setup(text) TO {qr};"
        ),
    ];
    assert_eq!(first.replication_origin_warnings.len(), 1);
    let why = &first.replication_origin_warnings[0];
    for g in &grants {
        assert!(why.contains(g), "the warning names {g}: {why}");
    }
    assert!(
        why.contains("disable_changefeed_replication = false"),
        "{why}"
    );
    assert_eq!(
        dry.replication_origin_warnings[0], *why,
        "the dry run warns the same"
    );
    assert!(first.render().contains(why.as_str()), "{}", first.render());
    let admin = cdc_tests::pg().await;
    let origins: i64 = admin
        .query_one(
            "SELECT count(*) FROM pg_replication_origin WHERE roname = ANY($1::text[])",
            &[&pool(&base, 3)],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(origins, 0, "nothing was created");
    p.wait_archived(p.db_now().await).await;
    let (counted, keys) = p.recorded_deletes().await;
    assert_eq!(
        counted, 200,
        "without an origin the purge's deletes are recorded"
    );
    assert_eq!(keys.len(), 200);

    // The GRANTs the warning named, as a superuser, then more rows to purge.
    admin.batch_execute(&grants.join("\n")).await.unwrap();
    p.client
        .batch_execute(&format!(
            "INSERT INTO {t} (id, created, payload)
               SELECT g, now() - interval '10 days', 'row ' || g FROM generate_series(301, 350) g",
            t = p.qt
        ))
        .await
        .unwrap();
    let mark = p.mark(&p.marker("created", "1 day", 50)).await;
    assert_eq!(mark.rows_marked, 50);
    p.wait_archived(p.db_now().await).await;
    let second = p.purge(&cfg).await;
    assert!(second.ok(), "{}", second.render());
    assert_eq!(second.totals.deleted, 50);
    assert_eq!(second.replication_origins, std::slice::from_ref(&base));
    assert!(second.replication_origin_warnings.is_empty());
    application_delete(&p, 250).await;
    let (counted, keys) = p.recorded_deletes().await;
    assert_eq!(counted, 201, "the second purge's deletes are left out");
    assert_eq!(keys.len(), 201);
    assert!(keys.iter().any(|k| k == "[250]"), "{keys:?}");
    assert!(
        !keys
            .iter()
            .any(|k| (301..=350).any(|id| *k == format!("[{id}]"))),
        "none of the second purge's rows: {keys:?}"
    );

    p.stop().await;
    common::drop_origins(&admin, &pool(&base, 3)).await;
    admin
        .batch_execute(&format!("DROP OWNED BY {qr}; DROP ROLE {qr};"))
        .await
        .unwrap();
}
