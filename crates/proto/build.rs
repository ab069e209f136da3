//! Compiles `proto/ravel.proto` with protox (pure Rust), so no system `protoc` is needed.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let proto_dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../../proto");
    let fds = protox::compile([format!("{proto_dir}/ravel.proto")], [proto_dir])?;
    tonic_prost_build::configure()
        .bytes(".ravel.v1.PutRequest.value")
        .bytes(".ravel.v1.GetReply.value")
        .bytes(".ravel.v1.RaftEnvelope.payload")
        .bytes(".ravel.v1.RaftReply.payload")
        .compile_fds(fds)?;
    println!("cargo:rerun-if-changed={proto_dir}");
    Ok(())
}
