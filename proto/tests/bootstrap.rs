//! The generated code in `src/gen/` is committed (readable, no protoc at
//! build time). This test regenerates it from `s3gate/v1/*.proto` and
//! `s3gate/plugin/v1/plugin.proto` with a
//! vendored protoc and fails if anything changed, leaving the fresh files in
//! place: run it, review the diff, commit.

#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};

#[test]
fn generated_code_is_current() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let gen = root.join("src/gen");
    let tmp = std::env::temp_dir().join(format!("s3gate-proto-bootstrap-{}", std::process::id()));
    std::fs::create_dir_all(&tmp).unwrap();
    let protoc = protoc_bin_vendored::protoc_bin_path().unwrap();
    // tonic-prost-build finds protoc through PROTOC; this test is the only
    // thread that reads it.
    std::env::set_var("PROTOC", &protoc);
    let protos = [
        root.join("s3gate/v1/decisions.proto"),
        root.join("s3gate/v1/admin.proto"),
    ];
    tonic_prost_build::configure()
        .out_dir(&tmp)
        .file_descriptor_set_path(tmp.join("descriptor.bin"))
        .build_transport(true)
        // These carry secrets: their Debug impls are written by hand, redacted.
        .skip_debug([
            "s3gate.v1.BackendCredentials",
            "s3gate.v1.SigV4Credentials",
            "s3gate.v1.StaticHmacSpec",
            "s3gate.v1.IbmIamSpec",
            "s3gate.v1.AwsAssumeRoleSpec",
            "s3gate.v1.BearerCredentials",
            "s3gate.v1.BearerToken",
            "s3gate.v1.SigningKeyResponse",
            "s3gate.v1.VerifySigV2Request",
            "s3gate.v1.KeyWithSecret",
            "s3gate.v1.PutBackendRequest",
            "s3gate.v1.AssumeRoleWithWebIdentityRequest",
            "s3gate.v1.StsCredentials",
        ])
        .compile_protos(&protos, &[root.to_path_buf()])
        .unwrap();
    // The plugin contract: a package of its own, with a server too (the
    // control plane's tests run real plugins), and a descriptor of its own
    // (the control plane does not serve it).
    tonic_prost_build::configure()
        .out_dir(&tmp)
        .build_transport(true)
        .skip_debug([
            "s3gate.plugin.v1.LookupSecretResponse",
            "s3gate.plugin.v1.BucketCredentialsResponse",
        ])
        .compile_protos(
            &[root.join("s3gate/plugin/v1/plugin.proto")],
            &[root.to_path_buf()],
        )
        .unwrap();

    let mut stale = Vec::new();
    for (generated, committed) in [
        ("s3gate.v1.rs", "s3gate.v1.rs"),
        ("descriptor.bin", "descriptor.bin"),
        ("s3gate.plugin.v1.rs", "s3gate.plugin.v1.rs"),
    ] {
        let fresh = std::fs::read(tmp.join(generated)).unwrap();
        let path: PathBuf = gen.join(committed);
        if std::fs::read(&path).ok().as_deref() != Some(&fresh[..]) {
            std::fs::write(&path, &fresh).unwrap();
            stale.push(path.display().to_string());
        }
    }
    let _ = std::fs::remove_dir_all(&tmp);
    assert!(
        stale.is_empty(),
        "generated code was stale and has been rewritten; review and commit: {stale:?}"
    );
}
