//! Network namespaces for tests that touch real firewalls: each test gets its own,
//! deleted on drop even when the test fails, so nothing leaks into the host's rulesets.

use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};

pub struct Netns {
    pub name: String,
}

impl Netns {
    pub fn new() -> Netns {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let name = format!("tr-fw-{}-{}", std::process::id(), NEXT.fetch_add(1, Ordering::Relaxed));
        let out = Command::new("ip")
            .args(["netns", "add", &name])
            .output()
            .expect("run ip");
        assert!(
            out.status.success(),
            "ip netns add {name}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let netns = Netns { name };
        netns.sh("ip link set lo up");
        netns
    }

    /// Runs a shell script inside the namespace; panics with its output when it fails.
    pub fn sh(&self, script: &str) -> String {
        let out = Command::new("ip")
            .args(["netns", "exec", &self.name, "sh", "-ec", script])
            .output()
            .expect("run ip netns exec");
        assert!(
            out.status.success(),
            "in {}: {script}\n{}{}",
            self.name,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Loads an nft ruleset file into the namespace.
    pub fn nft(&self, ruleset: &str) {
        let path = std::env::temp_dir().join(format!("{}.nft", self.name));
        std::fs::write(&path, ruleset).expect("write ruleset");
        let result = Command::new("ip")
            .args(["netns", "exec", &self.name, "nft", "-f"])
            .arg(&path)
            .output()
            .expect("run nft");
        let _ = std::fs::remove_file(&path);
        assert!(
            result.status.success(),
            "nft -f: {}",
            String::from_utf8_lossy(&result.stderr)
        );
    }

    /// Runs `body` on a thread of its own that has entered the namespace: the tools
    /// snapshot() starts inherit it, and the test harness's threads stay where they are.
    pub fn run<T: Send>(&self, body: impl FnOnce() -> T + Send) -> T {
        let path = std::path::PathBuf::from(format!("/run/netns/{}", self.name));
        crate::node::netns::run_in(&path, body).expect("enter the namespace")
    }

    /// Sends UDP datagrams from inside the namespace (they may be refused: the firewall
    /// under test drops them).
    pub fn send_udp(&self, to: std::net::SocketAddr, count: usize) {
        self.run(|| {
            let bind = if to.is_ipv4() { "0.0.0.0:0" } else { "[::]:0" };
            let socket = std::net::UdpSocket::bind(bind).expect("bind");
            for _ in 0..count {
                let _ = socket.send_to(b"tracer", to);
            }
        })
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.name]).status();
    }
}
