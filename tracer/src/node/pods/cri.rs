//! The node's container runtime, asked over the CRI API (gRPC on its unix socket) which pod
//! sandboxes run and which addresses they hold: `ListPodSandbox` for the sandboxes, and
//! `PodSandboxStatus` once per new sandbox for its addresses and network namespace mode.

use std::{
    collections::{HashMap, HashSet},
    net::IpAddr,
    path::{Path, PathBuf},
    time::Duration,
};

use anyhow::{anyhow, Context, Result};
use tonic::transport::Channel;
use tracer_cri::v1::{
    runtime_service_client::RuntimeServiceClient, ListPodSandboxRequest, NamespaceMode, PodSandboxState,
    PodSandboxStatusRequest, VersionRequest,
};

use crate::model::pod::PodRef;

/// Where containerd and CRI-O put their sockets, in the order tried: the first that exists is used.
pub(crate) const USUAL_SOCKETS: [&str; 6] = [
    "/run/containerd/containerd.sock",
    "/var/run/containerd/containerd.sock",
    "/run/crio/crio.sock",
    "/var/run/crio/crio.sock",
    "/run/k3s/containerd/containerd.sock",
    "/var/run/cri-dockerd.sock",
];

/// How long one call may take: a runtime that does not answer in this time is treated as
/// absent for this round, and the watch goes on.
const CALL_TIMEOUT: Duration = Duration::from_secs(3);

/// The first of [`USUAL_SOCKETS`] that exists and is a socket.
pub(crate) fn find_socket() -> Option<PathBuf> {
    use std::os::unix::fs::FileTypeExt;
    USUAL_SOCKETS
        .iter()
        .map(PathBuf::from)
        .find(|path| std::fs::metadata(path).is_ok_and(|meta| meta.file_type().is_socket()))
}

/// A sandbox as the runtime reports it, with what naming needs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Sandbox {
    pub pod: PodRef,
    /// Its addresses; empty for a sandbox in the node's network namespace (hostNetwork),
    /// whose addresses are the node's and name no pod.
    pub ips: Vec<IpAddr>,
}

/// A connection to the runtime's CRI service.
pub(crate) struct Runtime {
    socket: PathBuf,
    client: RuntimeServiceClient<Channel>,
}

impl Runtime {
    /// Connects lazily: the first call opens the socket.
    pub(crate) fn new(socket: &Path) -> Runtime {
        let channel = tracer_cri::unix_channel(socket, CALL_TIMEOUT);
        Runtime { socket: socket.to_path_buf(), client: RuntimeServiceClient::new(channel) }
    }

    pub(crate) fn socket(&self) -> &Path {
        &self.socket
    }

    /// The runtime's name and version, e.g. `containerd 1.6.20`: proves the socket speaks CRI v1.
    pub(crate) async fn version(&mut self) -> Result<String> {
        let reply = self
            .client
            .version(VersionRequest { version: String::new() })
            .await
            .map_err(|status| self.call_failed("Version", status))?
            .into_inner();
        Ok(format!("{} {}", reply.runtime_name, reply.runtime_version))
    }

    /// The ids of the sandboxes that are ready (a stopped sandbox has released its addresses).
    pub(crate) async fn ready_sandboxes(&mut self) -> Result<Vec<String>> {
        let reply = self
            .client
            .list_pod_sandbox(ListPodSandboxRequest { filter: None })
            .await
            .map_err(|status| self.call_failed("ListPodSandbox", status))?
            .into_inner();
        Ok(reply
            .items
            .into_iter()
            .filter(|item| item.state == PodSandboxState::SandboxReady as i32)
            .map(|item| item.id)
            .collect())
    }

    /// One sandbox's pod and addresses; `None` when it went away meanwhile.
    pub(crate) async fn sandbox(&mut self, id: &str) -> Result<Option<Sandbox>> {
        let reply = match self
            .client
            .pod_sandbox_status(PodSandboxStatusRequest { pod_sandbox_id: id.to_string(), verbose: false })
            .await
        {
            Ok(reply) => reply.into_inner(),
            Err(status) if status.code() == tonic::Code::NotFound => return Ok(None),
            Err(status) => return Err(self.call_failed("PodSandboxStatus", status)),
        };
        let Some(status) = reply.status else { return Ok(None) };
        let Some(metadata) = status.metadata else { return Ok(None) };
        let host_network = status
            .linux
            .and_then(|linux| linux.namespaces)
            .and_then(|namespaces| namespaces.options)
            .is_some_and(|options| options.network == NamespaceMode::Node as i32);
        let ips = match (host_network, status.network) {
            (false, Some(network)) => std::iter::once(network.ip)
                .chain(network.additional_ips.into_iter().map(|extra| extra.ip))
                .filter_map(|ip| ip.parse().ok())
                .collect(),
            _ => Vec::new(),
        };
        Ok(Some(Sandbox { pod: PodRef { namespace: metadata.namespace, name: metadata.name }, ips }))
    }

    fn call_failed(&self, call: &str, status: tonic::Status) -> anyhow::Error {
        let detail = match status.code() {
            tonic::Code::Unavailable => "the runtime does not answer on it".to_string(),
            tonic::Code::Unimplemented => "it does not serve the CRI v1 API (is the CRI plugin enabled?)".to_string(),
            _ => status.message().to_string(),
        };
        anyhow!("{call} on {} failed: {detail}", self.socket.display())
    }
}

/// The sandboxes of one listing, kept by id so that the next listing asks only about new ones.
#[derive(Default)]
pub(crate) struct SandboxCache {
    by_id: HashMap<String, Sandbox>,
}

impl SandboxCache {
    /// Lists the ready sandboxes and asks about the new ones; forgets those gone. True when
    /// anything changed.
    pub(crate) async fn refresh(&mut self, runtime: &mut Runtime) -> Result<bool> {
        let ids = runtime.ready_sandboxes().await?;
        let listed: HashSet<&String> = ids.iter().collect();
        let before = self.by_id.len();
        self.by_id.retain(|id, _| listed.contains(id));
        let mut changed = self.by_id.len() != before;
        for id in &ids {
            if self.by_id.contains_key(id) {
                continue;
            }
            if let Some(sandbox) = runtime.sandbox(id).await.with_context(|| format!("asking about sandbox {id}"))? {
                self.by_id.insert(id.clone(), sandbox);
                changed = true;
            }
        }
        Ok(changed)
    }

    pub(crate) fn sandboxes(&self) -> impl Iterator<Item = &Sandbox> {
        self.by_id.values()
    }
}
