//! `faultproxy UPSTREAM_ADDR`: run the fault-injecting proxy by hand (prints its address).

use std::net::SocketAddr;

use barge_faultproxy::{FaultProxy, Faults};

#[tokio::main]
async fn main() {
    let Some(upstream) = std::env::args().nth(1) else {
        eprintln!("usage: faultproxy UPSTREAM_ADDR (like 127.0.0.1:3900)");
        std::process::exit(2);
    };
    let upstream: SocketAddr = match upstream.parse() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("faultproxy: '{upstream}' is not an address: {e}");
            std::process::exit(2);
        }
    };
    match FaultProxy::start(upstream, Faults::default()).await {
        Ok(p) => {
            println!("{}", p.addr);
            let _ = tokio::signal::ctrl_c().await;
            let [c, s, i, cut, st] = p.counts.snapshot();
            eprintln!("connections {c}, 503 {s}, 500 {i}, cut {cut}, stalled {st}");
        }
        Err(e) => {
            eprintln!("faultproxy: {e}");
            std::process::exit(1);
        }
    }
}
