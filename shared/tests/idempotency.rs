//! The Redis claim/finish scripts against the real Redis (`REDIS_URL`,
//! default redis://127.0.0.1:6379/): one round trip before a part (done
//! marker, else lease) and one after (mark done, release only our lease);
//! an unreachable Redis answers "unknown" instead of failing; a group of
//! parts is claimed and finished in one pipelined round trip each.

use std::time::Duration;

use shared::idempotency::{part_done_key, part_lease_key, Idempotency, Lease, PartClaim};

fn redis_url() -> String {
    std::env::var("REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379/".into())
}

#[tokio::test]
async fn claim_and_finish_keep_leases_and_done_markers_straight() {
    let redis = Idempotency::new(&redis_url());
    // A fresh part per run: keys never collide with other tests or runs.
    let session = uuid::Uuid::new_v4();
    let (done, lease) = (part_done_key(session, 3), part_lease_key(session, 3));
    let ttl = Duration::from_secs(30);

    assert_eq!(
        redis.claim_part(&done, &lease, "worker-a", ttl).await,
        PartClaim::Lease(Lease::Acquired)
    );
    assert_eq!(
        redis.claim_part(&done, &lease, "worker-b", ttl).await,
        PartClaim::Lease(Lease::Held)
    );
    // Someone else's finish neither marks nor releases our lease.
    redis.finish_part(&done, &lease, "worker-b", false).await;
    assert_eq!(
        redis.claim_part(&done, &lease, "worker-b", ttl).await,
        PartClaim::Lease(Lease::Held)
    );
    // A finish without "done" releases: the next claim gets the lease.
    redis.finish_part(&done, &lease, "worker-a", false).await;
    assert_eq!(
        redis.claim_part(&done, &lease, "worker-b", ttl).await,
        PartClaim::Lease(Lease::Acquired)
    );
    // Done: marked and released; every later claim sees the marker.
    redis.finish_part(&done, &lease, "worker-b", true).await;
    assert_eq!(
        redis.claim_part(&done, &lease, "worker-c", ttl).await,
        PartClaim::Done
    );
    assert_eq!(redis.error_count(), 0);

    // Clean up what this test wrote.
    let client = redis::Client::open(redis_url()).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let removed: i64 = redis::cmd("DEL")
        .arg(&done)
        .arg(&lease)
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(removed, 1, "only the done marker was left");
}

#[tokio::test]
async fn unreachable_redis_answers_unknown() {
    // Port 1 on loopback: nothing listens there.
    let redis = Idempotency::new("redis://127.0.0.1:1/");
    let session = uuid::Uuid::new_v4();
    let (done, lease) = (part_done_key(session, 0), part_lease_key(session, 0));
    assert_eq!(
        redis
            .claim_part(&done, &lease, "w", Duration::from_secs(5))
            .await,
        PartClaim::Lease(Lease::Unknown)
    );
    redis.finish_part(&done, &lease, "w", true).await;
    assert!(redis.error_count() >= 2);
}

#[tokio::test]
async fn a_group_is_claimed_and_finished_in_one_round_trip_each() {
    let redis = Idempotency::new(&redis_url());
    let session = uuid::Uuid::new_v4();
    let keys: Vec<(String, String)> = (0..3)
        .map(|n| (part_done_key(session, n), part_lease_key(session, n)))
        .collect();
    let refs: Vec<(&str, &str)> = keys.iter().map(|(d, l)| (d.as_str(), l.as_str())).collect();
    let ttl = Duration::from_secs(30);
    // Part 1 is done already and part 2 is someone else's.
    redis
        .finish_part(refs[1].0, refs[1].1, "earlier", true)
        .await;
    assert_eq!(
        redis
            .claim_part(refs[2].0, refs[2].1, "worker-b", ttl)
            .await,
        PartClaim::Lease(Lease::Acquired)
    );
    assert_eq!(
        redis.claim_parts(&refs, "worker-a", ttl).await,
        vec![
            PartClaim::Lease(Lease::Acquired),
            PartClaim::Done,
            PartClaim::Lease(Lease::Held),
        ]
    );
    // Finishing the group marks part 0 done and releases only our lease.
    redis
        .finish_parts(
            &[(refs[0].0, refs[0].1, true), (refs[2].0, refs[2].1, false)],
            "worker-a",
        )
        .await;
    assert_eq!(
        redis.claim_parts(&refs, "worker-c", ttl).await,
        vec![
            PartClaim::Done,
            PartClaim::Done,
            PartClaim::Lease(Lease::Held),
        ]
    );
    assert_eq!(redis.error_count(), 0);

    let client = redis::Client::open(redis_url()).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let mut del = redis::cmd("DEL");
    for (d, l) in &keys {
        del.arg(d).arg(l);
    }
    let removed: i64 = del.query_async(&mut conn).await.unwrap();
    assert_eq!(removed, 3, "two done markers and worker-b's lease");
}

#[tokio::test]
async fn a_lease_is_renewed_while_its_work_runs_and_only_while_it_is_ours() {
    let redis = Idempotency::new(&redis_url());
    let session = uuid::Uuid::new_v4();
    let (done, lease) = (part_done_key(session, 1), part_lease_key(session, 1));
    let (done2, lease2) = (part_done_key(session, 2), part_lease_key(session, 2));
    let ttl = Duration::from_millis(600);
    for (d, l) in [(&done, &lease), (&done2, &lease2)] {
        assert_eq!(
            redis.claim_part(d, l, "worker-a", ttl).await,
            PartClaim::Lease(Lease::Acquired)
        );
    }
    let client = redis::Client::open(redis_url()).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let work = async {
        // Lease 2 is taken over by someone else (as after an expiry): its
        // renewals must stop, never extend the other holder's lease.
        let _: () = redis::cmd("SET")
            .arg(&lease2)
            .arg("worker-b")
            .arg("PX")
            .arg(60_000)
            .query_async(&mut conn.clone())
            .await
            .unwrap();
        let mut probes = Vec::new();
        for _ in 0..8 {
            tokio::time::sleep(Duration::from_millis(250)).await;
            probes.push(redis.claim_part(&done, &lease, "intruder", ttl).await);
        }
        probes
    };
    let probes = redis
        .renewing_while(&[&lease, &lease2], "worker-a", ttl, work)
        .await;
    assert!(
        probes.iter().all(|p| *p == PartClaim::Lease(Lease::Held)),
        "the lease was lost during 2 s of work with a 0.6 s lifetime: {probes:?}"
    );
    let holder2: Option<String> = redis::cmd("GET")
        .arg(&lease2)
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(holder2.as_deref(), Some("worker-b"));
    let ttl2: i64 = redis::cmd("PTTL")
        .arg(&lease2)
        .query_async(&mut conn)
        .await
        .unwrap();
    assert!(
        ttl2 > 50_000,
        "someone else's lease was shortened to {ttl2} ms"
    );
    // Once the work is over nothing renews it: it expires.
    tokio::time::sleep(Duration::from_millis(900)).await;
    assert_eq!(
        redis.claim_part(&done, &lease, "worker-c", ttl).await,
        PartClaim::Lease(Lease::Acquired)
    );
    let _: i64 = redis::cmd("DEL")
        .arg(&lease)
        .arg(&lease2)
        .query_async(&mut conn)
        .await
        .unwrap();
}
