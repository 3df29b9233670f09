//! Names the rule behind a dropped packet off the drain loop. Reading the rulesets runs
//! the firewall tools (tens of milliseconds, seconds on a large node); the drain loop must
//! keep reading the ring buffer meanwhile, so a worker thread reads them and attributes.
//! Requests that arrive while it reads are answered together by the next reading: a burst
//! of drops costs one more reading, not one each. Readings after the first take only the
//! chains the waiting drops' ways reach; on a node with thousands of nf_tables chains the
//! first one too (none is taken at start), so the first finding does not wait seconds for
//! a full reading.

use std::{
    collections::HashSet,
    sync::mpsc::{self, Receiver, RecvTimeoutError, Sender},
    thread::{self, JoinHandle},
    time::{Duration, Instant},
};

use crate::{
    findings::{
        attribution::HookDrop,
        netfilter::{judge_drop, judge_drop_after, judge_drop_from_reading, judge_drop_unnamed},
    },
    firewall::{self, eval::Ruleset, Inventory, OtherFlow, Snapshot, Verdict},
    model::monotonic_now_ns,
    model::{hook::Hook, packet::L4Proto},
    schema::finding::Finding,
};

/// What identifies drops that are the same problem: hook, source address, destination,
/// protocol (a client's every query comes from a new port).
pub(crate) type DropKey = (Hook, std::net::IpAddr, std::net::SocketAddr, L4Proto);

/// A netfilter drop whose rule is to be named: the packet as its hook saw it, and when.
pub(crate) struct Request {
    pub key: DropKey,
    pub packet: HookDrop,
    pub wall_time_ns: u64,
    /// Kernel (monotonic) time of the drop.
    pub timestamp_ns: u64,
}

/// Where the nat rules send a new flow now: asked for a query that a conntrack entry of an
/// earlier exchange sent to the backend chosen then.
pub(crate) struct NatQuestion {
    pub id: u64,
    /// The packet as its hook sees it before NAT (`PreRouting` for a pod's query).
    pub packet: HookDrop,
}

pub(crate) struct NatAnswer {
    pub id: u64,
    /// The destinations the DNAT rules choose between for such a packet now; `None` when the
    /// way through the nat chains could not be followed to its end (or was not read in time).
    pub targets: Option<Vec<std::net::SocketAddr>>,
}

/// What the worker is asked.
enum Job {
    Drop(Request),
    Nat(NatQuestion),
}

/// What it answers.
enum Reply {
    // Boxed: a drop's answer carries a whole finding, a NAT answer a few addresses.
    Drop(Box<Answer>),
    Nat(NatAnswer),
}

/// The rulesets as read at one moment.
struct Reading {
    snapshot: Snapshot,
    /// Kernel (monotonic) time the reading started: counters in it include every drop
    /// before then.
    started_ns: u64,
    /// The hooks whose chains it has; `None` when it has every chain.
    hooks: Option<Vec<Hook>>,
}

impl Reading {
    /// Reads the rulesets; says each problem reading them once, the first time it occurs.
    fn now(said: &mut HashSet<String>) -> Reading {
        let started_ns = monotonic_now_ns();
        let snapshot = firewall::snapshot();
        say_errors(&snapshot, said);
        Reading { snapshot, started_ns, hooks: None }
    }

    /// Reads what the ways of `packets` through their hooks reach, and no more.
    fn scoped(packets: &[&HookDrop], inventory: Option<&Inventory>, said: &mut HashSet<String>) -> Reading {
        let started_ns = monotonic_now_ns();
        let asked: Vec<_> = packets.iter().map(|packet| (packet.hook, packet.as_seen())).collect();
        let snapshot = firewall::scoped_snapshot(&asked, inventory);
        say_errors(&snapshot, said);
        let mut hooks: Vec<Hook> = Vec::new();
        for packet in packets {
            if !hooks.contains(&packet.hook) {
                hooks.push(packet.hook);
            }
        }
        Reading { snapshot, started_ns, hooks: Some(hooks) }
    }

    /// This reading as the "before" of a drop at `hook` at kernel time `drop_ns`: only when it
    /// was taken before the drop and has the hook's chains. A reading taken after it counts the
    /// drop already, so comparing with it would show no counter moving.
    fn before(&self, hook: Hook, drop_ns: u64) -> Option<&Snapshot> {
        let covers = self.hooks.as_ref().is_none_or(|hooks| hooks.contains(&hook));
        (covers && self.started_ns <= drop_ns).then_some(&self.snapshot)
    }
}

fn say_errors(snapshot: &Snapshot, said: &mut HashSet<String>) {
    for error in &snapshot.errors {
        if said.insert(error.clone()) {
            crate::note_line!("tracer: warning: {error}");
        }
    }
}

pub(crate) struct Answer {
    pub key: DropKey,
    pub finding: Option<Finding>,
}

/// How long a watch waits for the first reading of the rulesets before it attaches.
const FIRST_READING_WAIT: Duration = Duration::from_millis(300);

/// A reading that answered drops by itself is read again once it is this old.
const READING_FRESH_NS: u64 = 10_000_000_000;

/// Requests that arrive this soon after another share its reading.
const GATHER: Duration = Duration::from_millis(20);

pub(crate) struct FirewallWorker {
    requests: Option<Sender<Job>>,
    answers: Receiver<Reply>,
    thread: Option<JoinHandle<()>>,
    /// The drops asked about and not answered yet: what the end of a run states without
    /// their rule when the worker is not done by then.
    in_flight: Vec<(DropKey, HookDrop, u64)>,
    /// NAT questions not answered yet, and answers not taken yet.
    nat_in_flight: Vec<u64>,
    nat_answers: Vec<NatAnswer>,
}

impl FirewallWorker {
    /// Starts the worker, which reads the rulesets once (the "before" of the first drops)
    /// and then answers requests. Tracing waits for that reading at most
    /// [`FIRST_READING_WAIT`]: on a small node it is done by then, and the first drops are
    /// compared with it. On a node with thousands of nf_tables chains a full reading takes
    /// seconds: none is taken, and each drop is judged on what its way reaches, read when it
    /// comes. A drop older than the reading is judged without a "before" (see
    /// [`Reading::before`]).
    pub(crate) fn start() -> FirewallWorker {
        let (request_tx, request_rx) = mpsc::channel::<Job>();
        let (answer_tx, answer_rx) = mpsc::channel::<Reply>();
        let (ready_tx, ready_rx) = mpsc::channel::<()>();
        let thread = thread::Builder::new()
            .name("tracer-firewall".to_string())
            .spawn(move || {
                let mut said = HashSet::new();
                // nft's list of chains is quick at any size and tells a node where a full
                // reading takes seconds: there the chains a drop needs are read when it comes.
                let inventory = Inventory::read();
                let large = inventory.as_ref().is_some_and(Inventory::is_large);
                let before = (!large).then(|| Reading::now(&mut said));
                let _ = ready_tx.send(());
                serve(Worker { before, inventory: inventory.filter(|_| large), said }, request_rx, answer_tx);
            })
            .ok();
        // Without the thread (no threads left?) drops are shown without their rule.
        if thread.is_some() {
            let _ = ready_rx.recv_timeout(FIRST_READING_WAIT);
        }
        FirewallWorker {
            requests: thread.as_ref().map(|_| request_tx),
            answers: answer_rx,
            thread,
            in_flight: Vec::new(),
            nat_in_flight: Vec::new(),
            nat_answers: Vec::new(),
        }
    }

    /// Asks for the rule behind a drop; false when the worker is gone.
    pub(crate) fn request(&mut self, request: Request) -> bool {
        let asked = (request.key, request.packet.clone(), request.wall_time_ns);
        let sent = self.requests.as_ref().is_some_and(|requests| requests.send(Job::Drop(request)).is_ok());
        if sent {
            self.in_flight.push(asked);
        }
        sent
    }

    /// Asks where the nat rules send such a packet now; false when the worker is gone.
    pub(crate) fn ask_nat(&mut self, question: NatQuestion) -> bool {
        let id = question.id;
        let sent = self.requests.as_ref().is_some_and(|requests| requests.send(Job::Nat(question)).is_ok());
        if sent {
            self.nat_in_flight.push(id);
        }
        sent
    }

    /// Answers about drops ready now (NAT answers are kept for [`Self::nat_ready`]).
    pub(crate) fn ready(&mut self) -> Vec<Answer> {
        let replies: Vec<Reply> = self.answers.try_iter().collect();
        replies.into_iter().filter_map(|reply| self.received(reply)).collect()
    }

    /// NAT answers received by [`Self::ready`] and [`Self::wait`] so far.
    pub(crate) fn nat_ready(&mut self) -> Vec<NatAnswer> {
        std::mem::take(&mut self.nat_answers)
    }

    /// Waits for every outstanding answer until `deadline`; a drop still unanswered then
    /// (on a large node a reading takes seconds) gets its finding without the rule, saying
    /// why, rather than none: the kernel's verdict and hook are known all the same. A NAT
    /// question still unanswered gets no targets.
    pub(crate) fn wait(&mut self, deadline: Instant) -> Vec<Answer> {
        let mut answers = Vec::new();
        while !self.in_flight.is_empty() || !self.nat_in_flight.is_empty() {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.answers.recv_timeout(left) {
                Ok(reply) => answers.extend(self.received(reply)),
                Err(RecvTimeoutError::Timeout) | Err(RecvTimeoutError::Disconnected) => break,
            }
        }
        for (key, packet, wall_time_ns) in self.in_flight.drain(..) {
            let finding = judge_drop_unnamed(&packet, wall_time_ns, STOPPED_BEFORE_NAMED);
            answers.push(Answer { key, finding: Some(finding) });
        }
        for id in self.nat_in_flight.drain(..) {
            self.nat_answers.push(NatAnswer { id, targets: None });
        }
        answers
    }

    /// Files a reply: a drop's answer is returned, a NAT answer kept.
    fn received(&mut self, reply: Reply) -> Option<Answer> {
        match reply {
            Reply::Drop(answer) => {
                if let Some(at) = self.in_flight.iter().position(|(key, ..)| *key == answer.key) {
                    self.in_flight.swap_remove(at);
                }
                Some(*answer)
            }
            Reply::Nat(answer) => {
                self.nat_in_flight.retain(|id| *id != answer.id);
                self.nat_answers.push(answer);
                None
            }
        }
    }
}

/// Why a drop's finding names no rule when the run ended first.
const STOPPED_BEFORE_NAMED: &str = "tracer stopped before the rulesets were read to name the rule (reading them takes \
     seconds on a node with this many rules): run the watch longer to have it named";

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

/// The worker thread's state between requests.
struct Worker {
    /// The last reading, the "before" of the drops that come after it.
    before: Option<Reading>,
    /// nf_tables' chains, on a node so large that only scoped readings are taken.
    inventory: Option<Inventory>,
    said: HashSet<String>,
}

impl Worker {
    /// Rules change (a Service loses its endpoints, a policy is added): a reading that
    /// answered drops by itself is replaced once it is old, so the next drop is judged on
    /// fresh rules. On a large node it is only let go: the next drop reads what it needs.
    fn refresh_if_old(&mut self) {
        let Some(before) = &self.before else { return };
        if monotonic_now_ns().saturating_sub(before.started_ns) <= READING_FRESH_NS {
            return;
        }
        self.before = match self.inventory {
            Some(_) => None,
            None => Some(Reading::now(&mut self.said)),
        };
    }

    /// The base chains the kept inventory lists are those of when it was read.
    fn refresh_inventory_if_old(&mut self) {
        let old = self
            .inventory
            .as_ref()
            .is_some_and(|inventory| inventory.read_at.elapsed() > Duration::from_nanos(READING_FRESH_NS));
        if old {
            // A node that shrank below the size for scoped readings keeps them: they are
            // right at any size.
            if let Some(fresh) = Inventory::read() {
                self.inventory = Some(fresh);
            }
        }
    }

    /// The last reading, when it is young enough at the drop to name its rule by itself or
    /// to be the "before" of its counters: in an older one the rule may since have been
    /// removed or replaced, and naming it would be a false answer.
    fn fresh_before_of(&self, request: &Request) -> Option<&Snapshot> {
        let before = self.before.as_ref()?;
        if request.timestamp_ns.saturating_sub(before.started_ns) > READING_FRESH_NS {
            return None;
        }
        before.before(request.packet.hook, request.timestamp_ns)
    }

    fn judge(&self, request: &Request, after: &Snapshot) -> Finding {
        match self.fresh_before_of(request) {
            Some(before) => judge_drop(&request.packet, request.wall_time_ns, before, after),
            None => judge_drop_after(&request.packet, request.wall_time_ns, after),
        }
    }
}

fn serve(mut worker: Worker, jobs: Receiver<Job>, answers: Sender<Reply>) {
    while let Ok(first) = jobs.recv() {
        let mut batch = vec![first];
        let gather_until = Instant::now() + GATHER;
        loop {
            match jobs.recv_timeout(gather_until.saturating_duration_since(Instant::now())) {
                Ok(job) => batch.push(job),
                Err(RecvTimeoutError::Timeout) => break,
                Err(RecvTimeoutError::Disconnected) => return,
            }
        }
        // A drop the packet's way through the last reading names by itself is answered now:
        // another reading of a large node's rulesets takes seconds. A NAT question is about
        // rules that changed since an old entry was made: it is always read afresh.
        let mut waiting = Vec::new();
        let mut questions = Vec::new();
        for job in batch {
            let request = match job {
                Job::Drop(request) => request,
                Job::Nat(question) => {
                    questions.push(question);
                    continue;
                }
            };
            let named = worker
                .fresh_before_of(&request)
                .and_then(|reading| judge_drop_from_reading(&request.packet, request.wall_time_ns, reading));
            match named {
                Some(finding) => {
                    if answers.send(Reply::Drop(Box::new(Answer { key: request.key, finding: Some(finding) }))).is_err()
                    {
                        return;
                    }
                }
                None => waiting.push(request),
            }
        }
        if waiting.is_empty() && questions.is_empty() {
            worker.refresh_if_old();
            continue;
        }
        // Only what these packets' ways reach is read again: on a node with tens of thousands
        // of rules that is milliseconds, where reading everything takes seconds.
        worker.refresh_inventory_if_old();
        let packets: Vec<&HookDrop> = waiting
            .iter()
            .map(|request| &request.packet)
            .chain(questions.iter().map(|question| &question.packet))
            .collect();
        let after = Reading::scoped(&packets, worker.inventory.as_ref(), &mut worker.said);
        for question in questions {
            let targets = dnat_targets(&after.snapshot, &question.packet);
            if answers.send(Reply::Nat(NatAnswer { id: question.id, targets })).is_err() {
                return;
            }
        }
        for request in waiting {
            let finding = Some(worker.judge(&request, &after.snapshot));
            if answers.send(Reply::Drop(Box::new(Answer { key: request.key, finding }))).is_err() {
                return;
            }
        }
        worker.before = Some(after);
    }
}

/// The destinations the DNAT rules on `packet`'s hook choose between for it; `None` when a
/// way could not be followed to its end, or a DNAT names no one address (a range, a map).
fn dnat_targets(snapshot: &Snapshot, packet: &HookDrop) -> Option<Vec<std::net::SocketAddr>> {
    let ruleset = Ruleset::new(snapshot);
    let walks = ruleset.walk(packet.hook, &packet.as_seen());
    if walks.iter().any(|walk| !walk.complete || !walk.unread.is_empty()) {
        return None;
    }
    let mut targets = Vec::new();
    for end in walks.iter().flat_map(|walk| &walk.ends) {
        let Verdict::Other(text) = &end.verdict else { continue };
        if Verdict::other_flow(text) != OtherFlow::Ends || !text.to_ascii_lowercase().starts_with("dnat") {
            continue;
        }
        let target = end.verdict.dnat_destination(packet.dst.port())?;
        if !targets.contains(&target) {
            targets.push(target);
        }
    }
    Some(targets)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::findings::netfilter::tests::dns_query;
    use crate::schema::finding::{Evidence, FindingKind};
    use crate::system::netns::scratch::Netns;

    #[test]
    fn real_a_nat_question_is_answered_with_every_destination_the_rules_may_choose() {
        let ns = Netns::new();
        // kube-proxy's shape: a Service chain choosing one of two endpoints at random.
        ns.sh("iptables -t nat -N TR-SVC
             iptables -t nat -A PREROUTING -d 10.96.0.10/32 -p udp --dport 53 -j TR-SVC
             iptables -t nat -A PREROUTING -d 10.96.0.10/32 -p tcp --dport 53 -j DNAT --to-destination 10.244.0.9:53
             iptables -t nat -A TR-SVC -p udp -m statistic --mode random --probability 0.5 -j DNAT --to-destination 10.244.0.8:53
             iptables -t nat -A TR-SVC -p udp -j DNAT --to-destination 10.244.0.10:53");
        let answers = ns.run(|| {
            let mut worker = FirewallWorker::start();
            let packet = HookDrop {
                family: crate::model::hook::Family::Ipv4,
                hook: Hook::PreRouting,
                proto: L4Proto::Udp,
                src: "10.244.0.5:5300".parse().expect("addr"),
                dst: "10.96.0.10:53".parse().expect("addr"),
                in_iface: Some("cni0".to_string()),
                out_iface: None,
                icmp: None,
                tcp_reset: false,
            };
            assert!(worker.ask_nat(NatQuestion { id: 7, packet }));
            worker.wait(Instant::now() + Duration::from_secs(10));
            worker.nat_ready()
        });
        let [answer] = answers.as_slice() else { panic!("one answer, got {}", answers.len()) };
        assert_eq!(answer.id, 7);
        let want: Vec<std::net::SocketAddr> =
            ["10.244.0.8:53", "10.244.0.10:53"].iter().map(|a| a.parse().expect("addr")).collect();
        assert_eq!(answer.targets, Some(want));
    }

    #[test]
    fn real_a_drop_unanswered_when_the_run_ends_is_stated_without_its_rule() {
        let ns = Netns::new();
        let answers = ns.run(|| {
            let mut worker = FirewallWorker::start();
            let packet = dns_query(Some((3, 3)));
            let request = Request { key: packet.key(), packet, wall_time_ns: 1, timestamp_ns: monotonic_now_ns() };
            assert!(worker.request(request));
            // The worker gathers requests for GATHER before it reads anything: a run that
            // ends now ends before the answer.
            worker.wait(Instant::now())
        });
        let [answer] = answers.as_slice() else { panic!("one answer, got {}", answers.len()) };
        let finding = answer.finding.as_ref().expect("a finding, not none");
        assert_eq!(finding.kind, FindingKind::NetfilterReject);
        let Evidence::Netfilter(evidence) = &finding.evidence else { panic!("{finding:?}") };
        assert_eq!(evidence.attribution, STOPPED_BEFORE_NAMED);
        assert!(evidence.culprit.chain.is_none() && evidence.culprit.policy.is_none(), "{evidence:?}");
        assert!(evidence.candidates.is_empty(), "{evidence:?}");
        assert_eq!(evidence.icmp.as_deref(), Some("port-unreachable"));
    }
}
