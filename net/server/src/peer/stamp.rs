//! The cluster stamp: `cluster.json` in the data directory names the cluster and the node the
//! directory belongs to. Written on the first start with a cluster (atomically: temp file,
//! fsync, rename, fsync of the directory); every later start checks it, so a data directory of
//! another cluster, or of another node, refuses to start instead of joining with foreign data.
//! A directory without the file is a single-node directory (or a new one) and opens as today.

use std::io::Write;
use std::path::Path;

use serde::{Deserialize, Serialize};

/// The stamp file's name, in the data directory.
pub const STAMP_FILE: &str = "cluster.json";
const STAMP_VERSION: u32 = 1;

/// The content of [`STAMP_FILE`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterStamp {
    pub version: u32,
    pub cluster_id: String,
    pub node_id: u64,
}

/// Why a data directory may not be used.
#[derive(Debug, thiserror::Error)]
pub enum StampError {
    #[error(
        "data directory {dir} belongs to cluster '{found}' (node {found_node}), not to cluster \
         '{expected}': refusing to start"
    )]
    OtherCluster {
        dir: String,
        found: String,
        found_node: u64,
        expected: String,
    },
    #[error(
        "data directory {dir} belongs to node {found} of cluster '{cluster}', not to node \
         {expected}: refusing to start"
    )]
    OtherNode {
        dir: String,
        cluster: String,
        found: u64,
        expected: u64,
    },
    #[error(
        "data directory {dir} belongs to node {node} of cluster '{cluster}': start it with \
         --node-id {node} and the cluster list (--cluster), not as a single node"
    )]
    ClusterDirectory {
        dir: String,
        cluster: String,
        node: u64,
    },
    #[error("cluster stamp {path}: {reason}")]
    Unreadable { path: String, reason: String },
    #[error("cannot write the cluster stamp {path}: {source}")]
    Write {
        path: String,
        source: std::io::Error,
    },
}

/// The stamp of `data_dir`, if it has one.
pub fn read(data_dir: &Path) -> Result<Option<ClusterStamp>, StampError> {
    let path = data_dir.join(STAMP_FILE);
    let unreadable = |reason: String| StampError::Unreadable {
        path: path.display().to_string(),
        reason,
    };
    let bytes = match std::fs::read(&path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(unreadable(e.to_string())),
    };
    let stamp: ClusterStamp =
        serde_json::from_slice(&bytes).map_err(|e| unreadable(e.to_string()))?;
    if stamp.version != STAMP_VERSION {
        return Err(unreadable(format!("unsupported version {}", stamp.version)));
    }
    Ok(Some(stamp))
}

/// Checks `data_dir` for a cluster start as `node_id` of `cluster_id`; stamps it (creating the
/// directory) when it has no stamp yet.
pub fn check_or_stamp(data_dir: &Path, cluster_id: &str, node_id: u64) -> Result<(), StampError> {
    let dir = data_dir.display().to_string();
    match read(data_dir)? {
        Some(s) if s.cluster_id != cluster_id => Err(StampError::OtherCluster {
            dir,
            found: s.cluster_id,
            found_node: s.node_id,
            expected: cluster_id.to_string(),
        }),
        Some(s) if s.node_id != node_id => Err(StampError::OtherNode {
            dir,
            cluster: s.cluster_id,
            found: s.node_id,
            expected: node_id,
        }),
        Some(_) => Ok(()),
        None => {
            let stamp = ClusterStamp {
                version: STAMP_VERSION,
                cluster_id: cluster_id.to_string(),
                node_id,
            };
            write(data_dir, &stamp)
        }
    }
}

/// Checks `data_dir` for a single-node start: a directory stamped by a cluster refuses.
pub fn check_single_node(data_dir: &Path) -> Result<(), StampError> {
    match read(data_dir)? {
        Some(s) => Err(StampError::ClusterDirectory {
            dir: data_dir.display().to_string(),
            cluster: s.cluster_id,
            node: s.node_id,
        }),
        None => Ok(()),
    }
}

fn write(data_dir: &Path, stamp: &ClusterStamp) -> Result<(), StampError> {
    let path = data_dir.join(STAMP_FILE);
    let tmp = data_dir.join(format!("{STAMP_FILE}.tmp"));
    let err = |source| StampError::Write {
        path: path.display().to_string(),
        source,
    };
    let bytes = serde_json::to_vec_pretty(stamp).map_err(|e| err(std::io::Error::other(e)))?;
    std::fs::create_dir_all(data_dir).map_err(err)?;
    let mut f = std::fs::File::create(&tmp).map_err(err)?;
    f.write_all(&bytes).map_err(err)?;
    f.sync_all().map_err(err)?;
    drop(f);
    std::fs::rename(&tmp, &path).map_err(err)?;
    std::fs::File::open(data_dir)
        .and_then(|d| d.sync_all())
        .map_err(err)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_cluster_start_stamps_and_later_starts_check() {
        let dir = tempfile::tempdir().expect("tempdir");
        let data = dir.path().join("data");
        check_single_node(&data).expect("a new directory is a single-node one");
        check_or_stamp(&data, "east", 2).expect("first start stamps");
        assert_eq!(
            read(&data).expect("read"),
            Some(ClusterStamp {
                version: 1,
                cluster_id: "east".into(),
                node_id: 2
            })
        );
        assert!(!data.join("cluster.json.tmp").exists());
        check_or_stamp(&data, "east", 2).expect("same cluster, same node");
        let e = check_or_stamp(&data, "west", 2).expect_err("other cluster");
        assert!(e.to_string().contains("belongs to cluster 'east'"), "{e}");
        let e = check_or_stamp(&data, "east", 3).expect_err("other node");
        assert!(e.to_string().contains("not to node 3"), "{e}");
        let e = check_single_node(&data).expect_err("cluster directory");
        assert!(e.to_string().contains("--node-id 2"), "{e}");
        std::fs::write(data.join(STAMP_FILE), b"{").expect("corrupt");
        let e = check_or_stamp(&data, "east", 2).expect_err("corrupt stamp");
        assert!(e.to_string().contains("cluster stamp"), "{e}");
    }
}
