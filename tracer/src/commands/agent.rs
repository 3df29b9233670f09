//! What makes `tracer watch` useful on a Kubernetes node, and as the agent a DaemonSet runs:
//! pod names from the container runtime (`--cri-socket`), keeping to some pods (`--pod`,
//! `--namespace`) and serving metrics (`--metrics`). Orchestration only: the runtime client
//! is `node::pods`, naming `analysis::pods`, the metrics `sinks::metrics`.

use std::{net::SocketAddr, net::TcpListener, path::PathBuf};

use anyhow::{bail, Result};

use crate::model::packet::PortFilter;
use crate::{
    analysis::pods::{PodNames, PodSource},
    model::pod::{PodFilter, PodRef},
    node::pods::{cri, Pods},
    schema::sink::Sink,
    sinks::metrics::{node_checks::NodeChecks, server, Metrics, MetricsOutput},
};

/// Where pod names come from, for `watch` and `triage` alike.
#[derive(clap::Args, Debug, Default)]
pub(crate) struct RuntimeArgs {
    /// The container runtime's CRI socket (containerd, CRI-O), for pod names. By default the
    /// first of /run/containerd/containerd.sock, /run/crio/crio.sock (and their /var/run
    /// twins), /run/k3s/containerd/containerd.sock and /var/run/cri-dockerd.sock that
    /// exists; without one, packets are shown by address only.
    #[arg(long, value_name = "PATH")]
    pub cri_socket: Option<PathBuf>,
}

impl RuntimeArgs {
    /// Connects to the container runtime. A socket given with --cri-socket must answer;
    /// one found at a usual path that does not is a warning, and no pods are named.
    pub(crate) fn pods(&self) -> Result<Option<Pods>> {
        let (socket, given) = match &self.cri_socket {
            Some(socket) => (socket.clone(), true),
            None => match cri::find_socket() {
                Some(socket) => (socket, false),
                None => return Ok(None),
            },
        };
        match Pods::start(&socket) {
            Ok((mut pods, version)) => {
                crate::note_line!(
                    "tracer: naming pods from {version} at {} ({} pods with addresses on this node)",
                    socket.display(),
                    pods.table().len()
                );
                Ok(Some(pods))
            }
            Err(err) if given => {
                bail!("{err:#}: check --cri-socket (the runtime's CRI socket, e.g. /run/containerd/containerd.sock)")
            }
            Err(err) => {
                crate::note_line!(
                    "tracer: warning: no pod names: {err:#}; give the runtime's CRI socket with --cri-socket"
                );
                Ok(None)
            }
        }
    }

    /// `output` with pod names in front of it, when a runtime answers.
    pub(crate) fn named<'a>(&self, output: Box<dyn Sink + 'a>) -> Result<Box<dyn Sink + 'a>> {
        Ok(match self.pods()? {
            Some(pods) => Box::new(PodNames::new(output, PodSource::Runtime(pods), PodFilter::default())),
            None => output,
        })
    }
}

#[derive(clap::Args, Debug, Default)]
pub(crate) struct AgentArgs {
    #[command(flatten)]
    pub runtime: RuntimeArgs,

    /// Show only packets and findings with this pod at either end, as NAMESPACE/NAME
    /// (e.g. kube-system/coredns-5d78c9869d-6kx2p). Repeat for more pods. Needs the
    /// container runtime's socket.
    #[arg(long = "pod", value_name = "NS/NAME")]
    pub pods: Vec<PodRef>,

    /// Show only packets and findings with a pod of this Kubernetes namespace at either end.
    /// Repeatable; combines with --pod (either may match).
    #[arg(long = "namespace", value_name = "NS")]
    pub namespaces: Vec<String>,

    /// Serve Prometheus metrics on ADDR:PORT at /metrics while watching (and /healthz,
    /// /readyz for probes), e.g. --metrics 10.0.0.5:9742: the node's own address (the
    /// DaemonSet passes status.hostIP), not 0.0.0.0, which serves every network the host
    /// is on. The port is opened in the network namespace tracer starts in, also with --netns.
    #[arg(long, value_name = "ADDR:PORT")]
    pub metrics: Option<SocketAddr>,
}

/// What the agent flags set up before the watch starts.
pub(crate) struct Agent {
    pods: Option<Pods>,
    filter: PodFilter,
    metrics: Option<(Metrics, TcpListener)>,
}

impl AgentArgs {
    /// Opens the metrics port. Call before entering another network namespace (`--netns`).
    pub(crate) fn open_metrics(&self) -> Result<Option<(Metrics, TcpListener)>> {
        match self.metrics {
            Some(address) => Ok(Some((Metrics::new(), server::bind(address)?))),
            None => Ok(None),
        }
    }

    /// Connects to the container runtime (see [`RuntimeArgs::pods`]); the filters need one.
    pub(crate) fn start(&self, metrics: Option<(Metrics, TcpListener)>) -> Result<Agent> {
        let filter = PodFilter { pods: self.pods.clone(), namespaces: self.namespaces.clone() };
        let pods = self.runtime.pods()?;
        if pods.is_none() && !filter.is_empty() {
            bail!(
                "--pod and --namespace need pod names, and no container runtime answered at {}: give its CRI socket with --cri-socket",
                cri::USUAL_SOCKETS.join(", ")
            );
        }
        Ok(Agent { pods, filter, metrics })
    }
}

impl Agent {
    /// Starts serving the metrics and reading the node checks (in the network namespace
    /// watched, for the traced `port`), and puts pod naming and the metrics in front of
    /// `output`. The returned guard keeps the node checks read; drop it after the watch.
    pub(crate) fn outputs<'a>(
        self,
        output: Box<dyn Sink + 'a>,
        port: PortFilter,
    ) -> Result<(Box<dyn Sink + 'a>, Option<NodeChecks>)> {
        let mut output = output;
        if let Some(pods) = self.pods {
            output = Box::new(PodNames::new(output, PodSource::Runtime(pods), self.filter));
        }
        let Some((metrics, listener)) = self.metrics else { return Ok((output, None)) };
        let checks = NodeChecks::start(metrics.clone(), port)?;
        let address = listener.local_addr().map(|a| a.to_string()).unwrap_or_default();
        server::serve(listener, metrics.clone())?;
        crate::note_line!("tracer: serving metrics on http://{address}/metrics");
        Ok((Box::new(MetricsOutput::new(output, metrics)), Some(checks)))
    }
}
