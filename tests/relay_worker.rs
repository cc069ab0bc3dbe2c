//! The RPC client reaching a real `shardline worker` through the link
//! emulator: the protocol survives the relay and pays its delay.

mod common;

use std::time::{Duration, Instant};

use common::start_worker;
use shardline::relay::{LinkSpec, Relay};
use shardline::rpc::{ClientOptions, RpcClient};

#[tokio::test]
async fn rpc_round_trips_through_a_delayed_link() {
    let worker = start_worker(&[]);
    let relay = Relay::start(
        worker.endpoint,
        LinkSpec::new(Duration::from_millis(5), None),
    )
    .expect("start relay");

    let mut c = RpcClient::connect(&relay.addr().to_string(), ClientOptions::default())
        .await
        .expect("connect through the relay");
    let v = c.server_version();
    assert_eq!((v.major, v.minor, v.patch), (7, 0, 0));

    for _ in 0..3 {
        let t = Instant::now();
        c.sync().await.expect("sync through the relay");
        let took = t.elapsed();
        // 5 ms each way; the upper bound only catches a stuck relay.
        assert!(
            took >= Duration::from_millis(10),
            "round trip took {took:?}"
        );
        assert!(took < Duration::from_secs(30), "round trip took {took:?}");
    }
    let mem = c.device_memory(0).await.expect("device memory");
    assert!(mem.total > 0 && mem.free <= mem.total, "{mem:?}");

    let stats = relay.stats();
    assert_eq!(stats.connections, 1);
    assert!(
        stats.client_to_server > 0 && stats.server_to_client > 0,
        "{stats:?}"
    );
    drop(c);
}
