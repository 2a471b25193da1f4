//! The in-process apps on a private pipeline: a coordinator and a worker
//! started on port 0 ingest a few files from the queue, answer on their
//! bound addresses, and stop when asked.

use std::time::Duration;

use testkit::{md5_file, Batch, Pipeline};

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn coordinator_and_worker_run_in_process_and_stop() {
    let p = Pipeline::new("apps").await;
    let coordinator = p.start_coordinator().await;
    let worker = p.start_worker("apps-w1").await;
    assert_ne!(coordinator.addr.port(), 0);
    assert_ne!(worker.addr.port(), 0);

    let mut batch = Batch::default();
    for (i, size) in [0usize, 1, 70_000, 3 << 20].into_iter().enumerate() {
        let (name, dest) = (format!("in/{i}.bin"), format!("out/{i}.bin"));
        batch.add(&p, &format!("f{i}"), &name, &dest, size, i as u64);
    }
    p.submit(&batch.requests).await;
    let ids = batch.ids();
    let sessions = p.wait_finished(&ids, Duration::from_secs(120)).await;
    for s in &sessions {
        assert_eq!(s.state, "completed", "{}: {:?}", s.dest, s.error);
    }
    for (dest, md5) in &batch.expected {
        assert_eq!(&md5_file(&p.mount_path(dest)), md5, "{dest}");
    }

    let http = reqwest::Client::new();
    let ready = http.get(coordinator.url("/readyz")).send().await.unwrap();
    assert!(ready.status().is_success(), "{}", ready.status());
    let health = http.get(worker.url("/healthz")).send().await.unwrap();
    assert_eq!(health.text().await.unwrap(), "ok");
    let metrics = http.get(worker.url("/metrics")).send().await.unwrap();
    assert!(metrics.text().await.unwrap().contains("mfs_ingest_"));

    tokio::time::timeout(Duration::from_secs(60), async {
        worker.stop().await;
        coordinator.stop().await;
    })
    .await
    .expect("the apps stop within a minute of their shutdown");
}
