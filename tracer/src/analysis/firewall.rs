//! Names the rule behind a dropped packet off the drain loop. Reading the rulesets runs
//! the firewall tools (tens of milliseconds, seconds on a large node); the drain loop must
//! keep reading the ring buffer meanwhile, so a worker thread reads them and attributes.
//! Requests that arrive while it reads are answered together by the next reading: a burst
//! of drops costs one more reading, not one each.

use std::{
    collections::HashSet,
    sync::mpsc::{self, Receiver, RecvTimeoutError, Sender},
    thread::{self, JoinHandle},
    time::{Duration, Instant},
};

use crate::{
    findings::{attribution::HookDrop, netfilter::judge_drop},
    firewall::{self, Snapshot},
    model::{hook::Hook, packet::L4Proto},
    schema::finding::Finding,
};

/// What identifies drops that are the same problem: hook, source address, destination,
/// protocol (a client's every query comes from a new port).
pub(crate) type DropKey = (Hook, std::net::IpAddr, std::net::SocketAddr, L4Proto);

/// A netfilter drop whose rule is to be named: the packet as its hook saw it.
pub(crate) struct Request {
    pub key: DropKey,
    pub packet: HookDrop,
    pub wall_time_ns: u64,
}

pub(crate) struct Answer {
    pub key: DropKey,
    pub finding: Option<Finding>,
}

/// Requests that arrive this soon after another share its reading.
const GATHER: Duration = Duration::from_millis(20);

pub(crate) struct FirewallWorker {
    requests: Option<Sender<Request>>,
    answers: Receiver<Answer>,
    thread: Option<JoinHandle<()>>,
    in_flight: usize,
}

impl FirewallWorker {
    /// Starts the worker and waits until it has read the rulesets once: that reading is
    /// the "before" of the first drop, so it must be taken before anything is traced.
    pub(crate) fn start() -> FirewallWorker {
        let (request_tx, request_rx) = mpsc::channel::<Request>();
        let (answer_tx, answer_rx) = mpsc::channel::<Answer>();
        let (ready_tx, ready_rx) = mpsc::channel::<()>();
        let thread = thread::Builder::new()
            .name("tracer-firewall".to_string())
            .spawn(move || {
                let mut said = HashSet::new();
                let before = read_rulesets(&mut said);
                let _ = ready_tx.send(());
                serve(before, said, request_rx, answer_tx);
            })
            .ok();
        // Without the thread (no threads left?) drops are shown without their rule.
        if thread.is_some() {
            let _ = ready_rx.recv();
        }
        FirewallWorker { requests: thread.as_ref().map(|_| request_tx), answers: answer_rx, thread, in_flight: 0 }
    }

    /// Asks for the rule behind a drop; false when the worker is gone.
    pub(crate) fn request(&mut self, request: Request) -> bool {
        let sent = self.requests.as_ref().is_some_and(|requests| requests.send(request).is_ok());
        if sent {
            self.in_flight += 1;
        }
        sent
    }

    /// Answers ready now.
    pub(crate) fn ready(&mut self) -> Vec<Answer> {
        let answers: Vec<Answer> = self.answers.try_iter().collect();
        self.in_flight = self.in_flight.saturating_sub(answers.len());
        answers
    }

    /// Waits for every outstanding answer until `deadline`.
    pub(crate) fn wait(&mut self, deadline: Instant) -> Vec<Answer> {
        let mut answers = Vec::new();
        while self.in_flight > 0 {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.answers.recv_timeout(left) {
                Ok(answer) => {
                    self.in_flight -= 1;
                    answers.push(answer);
                }
                Err(RecvTimeoutError::Timeout) | Err(RecvTimeoutError::Disconnected) => break,
            }
        }
        answers
    }
}

impl Drop for FirewallWorker {
    fn drop(&mut self) {
        // Closing the request channel ends the worker's loop; a reading in progress
        // finishes within the tools' timeout, and nothing waits for it.
        self.requests = None;
        if let Some(thread) = self.thread.take() {
            if thread.is_finished() {
                let _ = thread.join();
            }
        }
    }
}

/// Reads the rulesets; says each problem reading them once, the first time it occurs.
fn read_rulesets(said: &mut HashSet<String>) -> Snapshot {
    let snapshot = firewall::snapshot();
    for error in &snapshot.errors {
        if said.insert(error.clone()) {
            eprintln!("tracer: warning: {error}");
        }
    }
    snapshot
}

fn serve(mut before: Snapshot, mut said: HashSet<String>, requests: Receiver<Request>, answers: Sender<Answer>) {
    while let Ok(first) = requests.recv() {
        let mut batch = vec![first];
        let gather_until = Instant::now() + GATHER;
        loop {
            match requests.recv_timeout(gather_until.saturating_duration_since(Instant::now())) {
                Ok(request) => batch.push(request),
                Err(RecvTimeoutError::Timeout) => break,
                Err(RecvTimeoutError::Disconnected) => return,
            }
        }
        let after = read_rulesets(&mut said);
        for request in batch {
            let finding = Some(judge_drop(&request.packet, request.wall_time_ns, &before, &after));
            if answers.send(Answer { key: request.key, finding }).is_err() {
                return;
            }
        }
        before = after;
    }
}
