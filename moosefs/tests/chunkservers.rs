//! The master's chunkserver list (`CLTOMA_CSERV_LIST`) on the real
//! three-chunkserver cluster started by `scripts/stack up`.

#[tokio::test]
async fn the_master_lists_the_three_chunkservers_of_the_local_cluster() {
    let client = moosefs::testing::client().await;
    let count = client.chunkserver_count().await.unwrap();
    assert_eq!((count.known, count.connected), (3, 3), "{count:?}");
    let list = moosefs::cservers::fetch_cserv_list(&client.config().master)
        .await
        .unwrap();
    let mut addrs: Vec<String> = list.iter().map(|e| e.addr.to_string()).collect();
    addrs.sort();
    if let Ok(expected) = std::env::var("MFS_CHUNKSERVERS") {
        let mut expected: Vec<&str> = expected.split(',').collect();
        expected.sort();
        assert_eq!(addrs, expected);
    }
    // A second ask within the cache's lifetime gives the same answer.
    assert_eq!(client.chunkserver_count().await.unwrap(), count);
    client.close().await;
}
