//! An OCI image archive: the image layout (`oci-layout`, `index.json`, `blobs/sha256/...`) in one
//! tar file, written here without a container tool. It is what `podman save --format
//! oci-archive` writes, and what `ctr images import` and `podman load` read.
//!
//! One image, one uncompressed layer, every timestamp zero and every file owned by root, so the
//! same inputs give the same digests.

use std::collections::BTreeMap;
use std::io::Write as _;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use serde_json::{json, Value};

const MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
const CONFIG: &str = "application/vnd.oci.image.config.v1+json";
const LAYER: &str = "application/vnd.oci.image.layer.v1.tar";

/// What one path of the layer holds.
enum Node {
    Dir,
    File { source: Source, mode: u32 },
    Symlink(String),
}

enum Source {
    Host(PathBuf),
    Bytes(Vec<u8>),
}

/// An image under construction: its name, its process defaults and its one layer.
pub struct Image {
    /// The full reference it is imported under (`registry.example.com/leash:0.1.0`).
    pub name: String,
    pub entrypoint: Vec<String>,
    pub cmd: Vec<String>,
    pub env: Vec<String>,
    files: BTreeMap<String, Node>,
}

/// What [`Image::write`] produced.
pub struct Written {
    /// Bytes of the archive.
    pub size: u64,
    /// Bytes of the layer (the image's root filesystem, uncompressed).
    pub layer_size: u64,
    /// `sha256:...` of the manifest: the image's identity.
    pub digest: String,
}

impl Image {
    pub fn new(name: &str) -> Self {
        Image {
            name: name.to_owned(),
            entrypoint: Vec::new(),
            cmd: Vec::new(),
            env: vec!["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".into()],
            files: BTreeMap::new(),
        }
    }

    pub fn dir(&mut self, path: &str) {
        self.insert(path, Node::Dir);
    }

    /// A copy of the host file `source` at `path`.
    pub fn host_file(&mut self, path: &str, source: &Path, mode: u32) {
        self.insert(path, Node::File { source: Source::Host(source.to_path_buf()), mode });
    }

    pub fn file(&mut self, path: &str, bytes: &[u8], mode: u32) {
        self.insert(path, Node::File { source: Source::Bytes(bytes.to_vec()), mode });
    }

    pub fn symlink(&mut self, path: &str, target: &str) {
        self.insert(path, Node::Symlink(target.to_owned()));
    }

    /// Adds `path` (absolute), and its missing parent directories.
    fn insert(&mut self, path: &str, node: Node) {
        let path = path.trim_matches('/').to_owned();
        let mut parent = Path::new(&path).parent();
        while let Some(p) = parent.filter(|p| !p.as_os_str().is_empty()) {
            self.files.entry(p.to_string_lossy().into_owned()).or_insert(Node::Dir);
            parent = p.parent();
        }
        self.files.insert(path, node);
    }

    /// The layer: a tar of every path, parents before children.
    fn layer(&self) -> Result<Vec<u8>> {
        let mut tar = tar::Builder::new(Vec::new());
        for (path, node) in &self.files {
            let mut header = tar::Header::new_ustar();
            header.set_mtime(0);
            header.set_uid(0);
            header.set_gid(0);
            match node {
                Node::Dir => {
                    header.set_entry_type(tar::EntryType::Directory);
                    header.set_mode(0o755);
                    header.set_size(0);
                    tar.append_data(&mut header, format!("{path}/"), std::io::empty())?;
                }
                Node::File { source, mode } => {
                    let bytes = match source {
                        Source::Host(p) => std::fs::read(p).with_context(|| format!("reading {}", p.display()))?,
                        Source::Bytes(b) => b.clone(),
                    };
                    header.set_entry_type(tar::EntryType::Regular);
                    header.set_mode(*mode);
                    header.set_size(bytes.len() as u64);
                    tar.append_data(&mut header, path, bytes.as_slice())?;
                }
                Node::Symlink(target) => {
                    header.set_entry_type(tar::EntryType::Symlink);
                    header.set_mode(0o777);
                    header.set_size(0);
                    tar.append_link(&mut header, path, target)?;
                }
            }
        }
        Ok(tar.into_inner()?)
    }

    /// Writes the archive to `out`.
    pub fn write(&self, out: &Path) -> Result<Written> {
        let layer = self.layer()?;
        let layer_digest = sha256(&layer);
        let config = json!({
            "architecture": "amd64",
            "os": "linux",
            "config": {
                "Entrypoint": self.entrypoint,
                "Cmd": self.cmd,
                "Env": self.env,
            },
            "rootfs": { "type": "layers", "diff_ids": [layer_digest] },
        });
        let config = serde_json::to_vec(&config)?;
        let manifest = json!({
            "schemaVersion": 2,
            "mediaType": MANIFEST,
            "config": descriptor(CONFIG, &config),
            "layers": [descriptor(LAYER, &layer)],
        });
        let manifest = serde_json::to_vec(&manifest)?;
        let mut manifest_descriptor = descriptor(MANIFEST, &manifest);
        manifest_descriptor["annotations"] = json!({
            // containerd names the imported image after this; podman after the OCI one.
            "io.containerd.image.name": self.name,
            "org.opencontainers.image.ref.name": self.name,
        });
        let index = json!({ "schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json", "manifests": [manifest_descriptor] });

        if let Some(dir) = out.parent() {
            std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        }
        let partial = out.with_extension("partial");
        let file = std::fs::File::create(&partial).with_context(|| format!("creating {}", partial.display()))?;
        let mut archive = tar::Builder::new(std::io::BufWriter::new(file));
        let mut put = |name: &str, bytes: &[u8]| -> Result<()> {
            let mut header = tar::Header::new_ustar();
            header.set_mtime(0);
            header.set_mode(0o644);
            header.set_size(bytes.len() as u64);
            header.set_entry_type(tar::EntryType::Regular);
            archive.append_data(&mut header, name, bytes)?;
            Ok(())
        };
        put("oci-layout", br#"{"imageLayoutVersion":"1.0.0"}"#)?;
        put("index.json", &serde_json::to_vec(&index)?)?;
        for blob in [&manifest, &config, &layer] {
            put(&format!("blobs/sha256/{}", hex(blob)), blob)?;
        }
        archive.into_inner()?.flush()?;
        std::fs::rename(&partial, out).with_context(|| format!("writing {}", out.display()))?;
        Ok(Written {
            size: std::fs::metadata(out)?.len(),
            layer_size: layer.len() as u64,
            digest: format!("sha256:{}", hex(&manifest)),
        })
    }
}

fn descriptor(media_type: &str, blob: &[u8]) -> Value {
    json!({ "mediaType": media_type, "digest": sha256(blob), "size": blob.len() })
}

fn sha256(blob: &[u8]) -> String {
    format!("sha256:{}", hex(blob))
}

/// The lower-case hex SHA-256 of `blob`.
fn hex(blob: &[u8]) -> String {
    ring::digest::digest(&ring::digest::SHA256, blob).as_ref().iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_archive_names_its_blobs_by_digest_and_is_reproducible() {
        let dir = std::env::temp_dir().join(format!("xtask-oci-{}", std::process::id()));
        let mut image = Image::new("example.com/x:1");
        image.file("/usr/local/bin/tool", b"#!/bin/sh\n", 0o755);
        image.symlink("/bin/sh", "busybox");
        let a = image.write(&dir.join("a.tar")).unwrap();
        let b = image.write(&dir.join("b.tar")).unwrap();
        assert_eq!(a.digest, b.digest);
        let mut archive = tar::Archive::new(std::fs::File::open(dir.join("a.tar")).unwrap());
        let mut names = Vec::new();
        for entry in archive.entries().unwrap() {
            let mut entry = entry.unwrap();
            let name = entry.path().unwrap().to_string_lossy().into_owned();
            let mut bytes = Vec::new();
            std::io::Read::read_to_end(&mut entry, &mut bytes).unwrap();
            if let Some(digest) = name.strip_prefix("blobs/sha256/") {
                assert_eq!(hex(&bytes), digest, "blob {name} is not named by its digest");
            }
            if name == "index.json" {
                let index: Value = serde_json::from_slice(&bytes).unwrap();
                assert_eq!(index["manifests"][0]["annotations"]["io.containerd.image.name"], "example.com/x:1");
                assert_eq!(index["manifests"][0]["digest"], a.digest);
            }
            names.push(name);
        }
        let _ = std::fs::remove_dir_all(&dir);
        assert_eq!(names.len(), 5, "{names:?}");
    }
}
