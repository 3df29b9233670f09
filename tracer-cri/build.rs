//! Compiles the part of the CRI v1 API that tracer and its tests call (`proto/api.proto`,
//! taken unchanged from Kubernetes' k8s.io/cri-api, package runtime.v1) into a gRPC client
//! and its messages.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto/api.proto");
    let descriptors = protox::compile(["api.proto"], ["proto"])?;
    tonic_prost_build::configure().build_server(false).compile_fds(descriptors)?;
    Ok(())
}
