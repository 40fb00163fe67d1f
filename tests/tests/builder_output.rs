//! `envd build --output`: a Docker archive that `docker load` takes, an OCI layout whose digests
//! hold together, and a push to a real registry (Debian's `docker-registry` on 127.0.0.1).

use std::collections::HashMap;
use std::io::Read;
use std::net::TcpListener;
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use envd_e2e::{envd, output_text, require_docker};

fn project(name: &str) -> (tempfile::TempDir, String) {
    let root = tempfile::Builder::new()
        .prefix("envd-output-test")
        .tempdir()
        .unwrap();
    let dir = root.path().join(name);
    std::fs::create_dir(&dir).unwrap();
    std::fs::write(
        dir.join("build.envd"),
        "def build():\n    base(image=\"debian:bookworm\")\n    run([\"echo output-test > /marker\"])\n",
    )
    .unwrap();
    let path = dir.to_str().unwrap().to_string();
    (root, path)
}

/// Every regular file of a tar, by path.
fn tar_files(path: &std::path::Path) -> HashMap<String, Vec<u8>> {
    let mut out = HashMap::new();
    let mut a = tar::Archive::new(std::fs::File::open(path).unwrap());
    for e in a.entries().unwrap() {
        let mut e = e.unwrap();
        let name = e.path().unwrap().to_string_lossy().into_owned();
        let mut data = Vec::new();
        e.read_to_end(&mut data).unwrap();
        out.insert(name, data);
    }
    out
}

fn sha256(data: &[u8]) -> String {
    let o = Command::new("sha256sum")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .and_then(|mut c| {
            use std::io::Write;
            c.stdin.take().unwrap().write_all(data)?;
            c.wait_with_output()
        })
        .unwrap();
    format!(
        "sha256:{}",
        String::from_utf8_lossy(&o.stdout)
            .split_whitespace()
            .next()
            .unwrap()
    )
}

#[test]
fn docker_and_oci_archives() {
    require_docker();
    let (_root, path) = project("e2eout");
    let dir = tempfile::tempdir().unwrap();
    let docker_tar = dir.path().join("image.tar");
    let o = envd(&[
        "build",
        "--path",
        &path,
        "--output",
        &format!(
            "type=docker,dest={},name=envd-e2e/out:docker",
            docker_tar.display()
        ),
    ]);
    assert!(o.status.success(), "{}", output_text(&o));
    let _ = Command::new("docker")
        .args(["rmi", "-f", "envd-e2e/out:docker"])
        .output();
    let o = Command::new("docker")
        .args(["load", "-i"])
        .arg(&docker_tar)
        .output()
        .unwrap();
    assert!(
        o.status.success() && output_text(&o).contains("envd-e2e/out:docker"),
        "{}",
        output_text(&o)
    );
    let o = Command::new("docker")
        .args(["run", "--rm", "envd-e2e/out:docker", "cat", "/marker"])
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&o.stdout), "output-test\n");

    // OCI: index -> manifest -> config and layers, every digest matching its blob, and each
    // (uncompressed) layer's digest listed in the config's diff_ids.
    let oci_tar = dir.path().join("oci.tar");
    let o = envd(&[
        "build",
        "--path",
        &path,
        "--output",
        &format!("type=oci,dest={},name=envd-e2e/out:oci", oci_tar.display()),
    ]);
    assert!(o.status.success(), "{}", output_text(&o));
    let files = tar_files(&oci_tar);
    assert!(files.contains_key("oci-layout"));
    let blob = |d: &str| -> &Vec<u8> {
        let b = files
            .get(&format!("blobs/sha256/{}", d.trim_start_matches("sha256:")))
            .unwrap_or_else(|| panic!("blob {d} missing"));
        assert_eq!(sha256(b), d, "blob content does not match its digest");
        b
    };
    let index: serde_json::Value = serde_json::from_slice(&files["index.json"]).unwrap();
    let m = &index["manifests"][0];
    assert_eq!(
        m["annotations"]["org.opencontainers.image.ref.name"],
        "envd-e2e/out:oci"
    );
    let manifest: serde_json::Value =
        serde_json::from_slice(blob(m["digest"].as_str().unwrap())).unwrap();
    let config: serde_json::Value =
        serde_json::from_slice(blob(manifest["config"]["digest"].as_str().unwrap())).unwrap();
    let diff_ids = config["rootfs"]["diff_ids"].as_array().unwrap();
    let layers = manifest["layers"].as_array().unwrap();
    assert_eq!(diff_ids.len(), layers.len());
    for (l, d) in layers.iter().zip(diff_ids) {
        blob(l["digest"].as_str().unwrap());
        assert_eq!(&l["digest"], d);
    }
}

struct Registry(Child);
impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn push_to_a_local_registry() {
    require_docker();
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("config.yml");
    std::fs::write(
        &config,
        format!(
            "version: 0.1\nstorage:\n  filesystem:\n    rootdirectory: {}\nhttp:\n  addr: 127.0.0.1:{port}\n",
            dir.path().join("data").display()
        ),
    )
    .unwrap();
    let _registry = Registry(
        Command::new("docker-registry")
            .arg("serve")
            .arg(&config)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("docker-registry (Debian's package; scripts/test installs it)"),
    );
    let tags = format!("http://127.0.0.1:{port}/v2/envd-e2e/pushed/tags/list");
    let deadline = Instant::now() + Duration::from_secs(10);
    while Command::new("curl")
        .args(["-sf", &format!("http://127.0.0.1:{port}/v2/")])
        .output()
        .map(|o| !o.status.success())
        .unwrap_or(true)
    {
        assert!(Instant::now() < deadline, "docker-registry did not start");
        std::thread::sleep(Duration::from_millis(100));
    }
    let (_root, path) = project("e2epush");
    let name = format!("127.0.0.1:{port}/envd-e2e/pushed:v1");
    let o = envd(&[
        "build",
        "--path",
        &path,
        "--output",
        &format!("type=image,name={name},push=true"),
    ]);
    assert!(o.status.success(), "{}", output_text(&o));
    assert!(
        output_text(&o).contains(&format!("pushed {name}")),
        "{}",
        output_text(&o)
    );
    let o = Command::new("curl").args(["-sf", &tags]).output().unwrap();
    assert!(
        String::from_utf8_lossy(&o.stdout).contains("\"v1\""),
        "{}",
        output_text(&o)
    );
}
