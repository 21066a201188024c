//! `faultproxy UPSTREAM_ADDR`: run the fault-injecting proxy by hand (prints its address).
//! `faultproxy tls UPSTREAM_ADDR CA_FILE`: run a TLS front instead; its certificate
//! authority goes to CA_FILE (PEM), for a connection's `ca_bundle`.
//! `faultproxy delay MS UPSTREAM_ADDR`: add MS milliseconds to every round trip (MS / 2 each way),
//! no faults.

use std::net::SocketAddr;

use barge_faultproxy::{DelayProxy, FaultProxy, Faults, TlsFront};

const USAGE: &str = "usage: faultproxy UPSTREAM_ADDR | faultproxy tls UPSTREAM_ADDR CA_FILE | faultproxy delay MS UPSTREAM_ADDR (UPSTREAM_ADDR like 127.0.0.1:3900)";

fn fail(msg: &str, code: i32) -> ! {
    eprintln!("faultproxy: {msg}");
    std::process::exit(code);
}

fn address(arg: Option<String>) -> SocketAddr {
    let Some(upstream) = arg else {
        fail(USAGE, 2);
    };
    upstream
        .parse()
        .unwrap_or_else(|e| fail(&format!("'{upstream}' is not an address: {e}"), 2))
}

#[tokio::main]
async fn main() {
    let mut args = std::env::args().skip(1);
    let first = args.next();
    if first.as_deref() == Some("delay") {
        let ms = args.next().unwrap_or_default();
        let Ok(ms) = ms.parse::<u64>() else {
            fail(
                &format!("'{ms}' is not a whole number of milliseconds; {USAGE}"),
                2,
            );
        };
        let upstream = address(args.next());
        let proxy = DelayProxy::start(upstream, std::time::Duration::from_micros(ms * 500))
            .await
            .unwrap_or_else(|e| fail(&e.to_string(), 1));
        println!("{}", proxy.addr);
        let _ = tokio::signal::ctrl_c().await;
        return;
    }
    if first.as_deref() == Some("tls") {
        let upstream = address(args.next());
        let Some(ca_file) = args.next() else {
            fail(USAGE, 2);
        };
        let front = TlsFront::start(upstream)
            .await
            .unwrap_or_else(|e| fail(&e.to_string(), 1));
        if let Err(e) = std::fs::write(&ca_file, &front.ca_pem) {
            fail(&format!("writing {ca_file}: {e}"), 1);
        }
        println!("{}", front.addr);
        let _ = tokio::signal::ctrl_c().await;
        return;
    }
    let upstream = address(first);
    match FaultProxy::start(upstream, Faults::default()).await {
        Ok(p) => {
            println!("{}", p.addr);
            let _ = tokio::signal::ctrl_c().await;
            let [c, s, i, cut, st] = p.counts.snapshot();
            eprintln!("connections {c}, 503 {s}, 500 {i}, cut {cut}, stalled {st}");
        }
        Err(e) => fail(&e.to_string(), 1),
    }
}
