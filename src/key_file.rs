//! Secret keys read from files follow the file: a rotated key (a Kubernetes Secret the kubelet
//! swaps under its mount, or a file replaced by hand) is in use within [`KEY_POLL`], without a
//! restart. Forgetting a restart after a rotation would otherwise sign with the old key until
//! Tencent answers 70009, then lock the app out (70050).
//!
//! Each file is read again every [`KEY_POLL`] (a few bytes; a content compare catches every
//! way a file can be replaced, where change events miss the kubelet's symlink swap). A key
//! that differs replaces the old one and a UserSig is minted with it at once
//! (`usersig_mints_total{reason="key_rotated"}`). A file that cannot be read, or is empty
//! (caught mid-write), keeps the key in use and is logged once until it changes again.

use std::path::PathBuf;
use std::sync::Weak;
use std::time::Duration;

use crate::signer::Signer;

/// How often each key file is read again.
pub const KEY_POLL: Duration = Duration::from_secs(2);

/// One app whose key comes from a file.
#[derive(Debug)]
pub struct Watched {
    pub app: String,
    pub path: PathBuf,
    pub signer: Weak<Signer>,
}

/// Follows every key file for as long as any of their signers lives.
pub async fn watch(watched: Vec<Watched>) {
    // The last problem logged per file, so that a lasting one is logged once.
    let mut problems: Vec<Option<String>> = vec![None; watched.len()];
    loop {
        tokio::time::sleep(KEY_POLL).await;
        let mut is_any_alive = false;
        for (entry, problem) in watched.iter().zip(&mut problems) {
            let Some(signer) = entry.signer.upgrade() else {
                continue;
            };
            is_any_alive = true;
            // A blocking read of a small file: brief, and at most once per KEY_POLL per app.
            match crate::config::read_key_file(&entry.path) {
                Ok(key) => {
                    *problem = None;
                    if signer.rotate_key(key) {
                        tracing::info!(
                            app = %entry.app,
                            file = %entry.path.display(),
                            "the secret key file changed: signing with the new key from now on"
                        );
                    }
                }
                Err(now) if problem.as_ref() != Some(&now) => {
                    tracing::warn!(
                        app = %entry.app,
                        "{now}; still signing with the key read before"
                    );
                    *problem = Some(now);
                }
                Err(_) => {}
            }
        }
        if !is_any_alive {
            return;
        }
    }
}
