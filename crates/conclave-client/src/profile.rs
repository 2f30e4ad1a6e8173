//! A profile: one device's identity and what it knows, in one directory.
//!
//! ```text
//! DIR/               0700
//!   profile.json     0600  the server, pinned fingerprints, the account
//!   device.key       0600  the device's Ed25519 seed, hex
//!   mls.db           0600  MLS state and decrypted history (see `engine`)
//! ```
//!
//! Files are written atomically (temporary file, fsync, rename), so a crash
//! never leaves half a profile.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

use crate::{ClientError, DeviceKey, ServerAddr};

const STATE_FILE: &str = "profile.json";
const KEY_FILE: &str = "device.key";

/// The account this profile's device belongs to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AccountRecord {
    /// The server the account lives on.
    pub server: String,
    /// The username.
    pub username: String,
    /// The display name, as last seen.
    pub display_name: String,
    /// This device's number within the account.
    pub device_id: u32,
}

/// What `profile.json` holds.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProfileState {
    /// The server used last, so later commands need no `--server`.
    pub server: Option<String>,
    /// Pinned certificate fingerprints, by server address.
    #[serde(default)]
    pub known_servers: BTreeMap<String, String>,
    /// The account, once registered or logged in.
    pub account: Option<AccountRecord>,
}

/// An open profile directory.
#[derive(Debug)]
pub struct Profile {
    dir: PathBuf,
    /// What the profile knows; change it, then [`Profile::save`].
    pub state: ProfileState,
}

impl Profile {
    /// Opens the profile in `dir`, creating the directory (0700) if needed.
    pub fn open(dir: &Path) -> Result<Self, ClientError> {
        create_private_dir(dir).map_err(|e| err(dir, format!("cannot create the directory: {e}")))?;
        let path = dir.join(STATE_FILE);
        let state = match std::fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes)
                .map_err(|e| err(&path, format!("is not a valid profile ({e}); fix or remove it")))?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => ProfileState::default(),
            Err(e) => return Err(err(&path, format!("cannot read: {e}"))),
        };
        Ok(Self { dir: dir.to_owned(), state })
    }

    /// The profile directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Writes `profile.json`.
    pub fn save(&self) -> Result<(), ClientError> {
        let path = self.dir.join(STATE_FILE);
        let json =
            serde_json::to_vec_pretty(&self.state).map_err(|e| err(&path, format!("cannot encode: {e}")))?;
        write_private_atomic(&path, &json).map_err(|e| err(&path, format!("cannot write: {e}")))
    }

    /// The pinned fingerprint for `server`, if any.
    pub fn pin(&self, server: &ServerAddr) -> Option<&str> {
        self.state.known_servers.get(&server.to_string()).map(String::as_str)
    }

    /// The device key, if this profile has one.
    pub fn device_key(&self) -> Result<Option<DeviceKey>, ClientError> {
        let path = self.dir.join(KEY_FILE);
        let text = match std::fs::read_to_string(&path) {
            Ok(t) => Zeroizing::new(t),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(err(&path, format!("cannot read: {e}"))),
        };
        let mut seed = Zeroizing::new([0u8; 32]);
        hex::decode_to_slice(text.trim(), &mut seed[..])
            .map_err(|_| err(&path, "is not a valid device key (64 hex digits expected)".into()))?;
        Ok(Some(DeviceKey::from_seed(&seed)))
    }

    /// The device key, made and stored (0600) on first use.
    pub fn device_key_or_create(&self) -> Result<DeviceKey, ClientError> {
        if let Some(key) = self.device_key()? {
            return Ok(key);
        }
        let key = DeviceKey::generate();
        let path = self.dir.join(KEY_FILE);
        let text = Zeroizing::new(hex::encode(*key.seed()) + "\n");
        write_private_atomic(&path, text.as_bytes()).map_err(|e| err(&path, format!("cannot write: {e}")))?;
        Ok(key)
    }
}

fn err(path: &Path, message: String) -> ClientError {
    ClientError::Profile { path: path.to_owned(), message }
}

fn create_private_dir(dir: &Path) -> std::io::Result<()> {
    let mut builder = std::fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    std::os::unix::fs::DirBuilderExt::mode(&mut builder, 0o700);
    builder.create(dir)
}

fn write_private_atomic(path: &Path, contents: &[u8]) -> std::io::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let mut tmp = tempfile::NamedTempFile::new_in(dir)?;
    // NamedTempFile is created 0600 on Unix.
    tmp.write_all(contents)?;
    tmp.as_file().sync_all()?;
    tmp.persist(path).map_err(|e| e.error)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn state_and_key_persist_privately() {
        let dir = tempfile::tempdir().unwrap();
        let pdir = dir.path().join("p");
        let mut p = Profile::open(&pdir).unwrap();
        assert!(p.device_key().unwrap().is_none());
        let key = p.device_key_or_create().unwrap();
        p.state.server = Some("localhost:7667".into());
        p.state.known_servers.insert("localhost:7667".into(), "SHA256:00".into());
        p.save().unwrap();

        let again = Profile::open(&pdir).unwrap();
        assert_eq!(again.state, p.state);
        assert_eq!(again.device_key().unwrap().unwrap().public(), key.public());
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = |f: &str| std::fs::metadata(pdir.join(f)).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode(""), 0o700);
            assert_eq!(mode(STATE_FILE), 0o600);
            assert_eq!(mode(KEY_FILE), 0o600);
        }
    }

    #[test]
    fn corrupt_profile_is_a_clear_error() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(STATE_FILE), "{not json").unwrap();
        let e = Profile::open(dir.path()).unwrap_err().to_string();
        assert!(e.contains("not a valid profile"), "{e}");
        std::fs::write(dir.path().join(STATE_FILE), "{}").unwrap();
        std::fs::write(dir.path().join(KEY_FILE), "xyz").unwrap();
        let e = Profile::open(dir.path()).unwrap().device_key().unwrap_err().to_string();
        assert!(e.contains("not a valid device key"), "{e}");
    }
}
