//! Compiles `proto/` into Rust with a vendored `protoc`, so building needs
//! no system protoc, and writes the file descriptor set that server
//! reflection serves. Also makes a change under `migrations/` rebuild the
//! crate: `sqlx::migrate!` embeds them, but cargo does not see it read them.
//! (A change under `proto/` must rerun this script too: it is listed.)

use std::{env, path::PathBuf};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    // Once a build script names what it reads, cargo reruns it only when
    // one of those changes: the protos as well as the migrations.
    println!("cargo:rerun-if-changed=migrations");
    println!("cargo:rerun-if-changed=proto");
    println!("cargo:rerun-if-changed=build.rs");
    let out_dir = PathBuf::from(env::var("OUT_DIR")?);
    let well_known = protoc_bin_vendored::include_path()?;
    let mut config = tonic_prost_build::Config::new();
    config.protoc_executable(protoc_bin_vendored::protoc_bin_path()?);
    // A request that does not decode is the caller's mistake:
    // INVALID_ARGUMENT (src/api/codec.rs), not prost's INTERNAL.
    tonic_prost_build::configure()
        .codec_path("crate::api::codec::ProtoCodec")
        .file_descriptor_set_path(out_dir.join("jobvisor_descriptor.bin"))
        .compile_with_config(
            config,
            &[
                PathBuf::from("proto/jobvisor/v1/jobvisor.proto"),
                PathBuf::from("proto/jobvisor/v1/worker.proto"),
            ],
            &[PathBuf::from("proto"), well_known],
        )?;
    Ok(())
}
