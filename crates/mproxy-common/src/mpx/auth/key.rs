//! Pre-shared keys: key files, keygen, key ids, the keyring

use std::fmt;
use std::io::{Read, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use ring::hkdf;
use ring::rand::{SecureRandom, SystemRandom};

use super::{extract, Len, INFO_KEY_ID, KEY_ID_LEN};

/// Bytes of a pre-shared key
pub const KEY_LEN: usize = 32;
/// A key file larger than this is refused (it holds one line and comments)
pub const KEY_FILE_MAX_LEN: u64 = 64 * 1024;

/// The short public name of a key, carried in every keyed frame
///
/// The first three bytes of HKDF-Expand(PRK, "mpx v2 key id"): it tells
/// which key to try without revealing anything about the key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct KeyId(pub [u8; KEY_ID_LEN]);

impl fmt::Display for KeyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for b in self.0 {
            write!(f, "{b:02x}")?;
        }
        Ok(())
    }
}

/// A 256-bit pre-shared key, held only as its HKDF pseudorandom key
///
/// `Debug` shows the key id only.
#[derive(Clone)]
pub struct Key {
    prk: hkdf::Prk,
    id: KeyId,
}

impl fmt::Debug for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Key({})", self.id)
    }
}

impl Key {
    /// The key with these 32 bytes
    pub fn from_bytes(bytes: &[u8; KEY_LEN]) -> Self {
        let prk = extract(bytes);
        let mut id = [0u8; KEY_ID_LEN];
        // expanding 3 bytes cannot fail (the limit is 255 * 32)
        let _ = prk
            .expand(&[INFO_KEY_ID], Len(KEY_ID_LEN))
            .and_then(|okm| okm.fill(&mut id));
        Self { prk, id: KeyId(id) }
    }

    /// A fresh random key from the OS random source
    ///
    /// # Errors
    /// `None` if the OS gives no randomness.
    pub fn generate() -> Option<Self> {
        random_key_bytes().map(|b| Self::from_bytes(&b))
    }

    /// Load a key file (PROTOCOL.md §16.1): it must be a regular file
    /// readable by its owner only, holding one key in hex or base64
    ///
    /// # Errors
    /// A [`KeyFileError`] naming the file and the fix.
    pub fn load(path: &Path) -> Result<Self, KeyFileError> {
        let err = |kind| KeyFileError {
            path: path.to_path_buf(),
            kind,
        };
        let file = std::fs::File::open(path).map_err(|e| {
            err(if e.kind() == std::io::ErrorKind::NotFound {
                KeyFileErrorKind::NotFound
            } else {
                KeyFileErrorKind::Unreadable(e.kind())
            })
        })?;
        // check the file that was opened, not the path again (no race)
        let meta = file
            .metadata()
            .map_err(|e| err(KeyFileErrorKind::Unreadable(e.kind())))?;
        if !meta.is_file() {
            return Err(err(KeyFileErrorKind::NotRegular));
        }
        let mode = meta.permissions().mode() & 0o7777;
        if mode & 0o077 != 0 {
            return Err(err(KeyFileErrorKind::Permissions(mode)));
        }
        if meta.len() > KEY_FILE_MAX_LEN {
            return Err(err(KeyFileErrorKind::TooLarge));
        }
        let mut text = Vec::new();
        file.take(KEY_FILE_MAX_LEN + 1)
            .read_to_end(&mut text)
            .map_err(|e| err(KeyFileErrorKind::Unreadable(e.kind())))?;
        if text.len() as u64 > KEY_FILE_MAX_LEN {
            return Err(err(KeyFileErrorKind::TooLarge));
        }
        let text = std::str::from_utf8(&text).map_err(|_| err(KeyFileErrorKind::NotText))?;
        let bytes = parse_key_text(text).map_err(|e| err(KeyFileErrorKind::Text(e)))?;
        Ok(Self::from_bytes(&bytes))
    }

    /// The key's id
    pub fn id(&self) -> KeyId {
        self.id
    }

    pub(super) fn prk(&self) -> &hkdf::Prk {
        &self.prk
    }

    /// The same key under another id (tests of a forger's wrong key)
    #[cfg(test)]
    pub(super) fn with_id(mut self, id: KeyId) -> Self {
        self.id = id;
        self
    }
}

fn random_key_bytes() -> Option<[u8; KEY_LEN]> {
    let mut b = [0u8; KEY_LEN];
    SystemRandom::new().fill(&mut b).ok()?;
    Some(b)
}

/// Write a fresh random key to a new file `path` with mode 0600
///
/// The file holds a comment line naming the key id and the key in base64
/// (44 characters, the format of `wg genkey` and `openssl rand -base64 32`).
///
/// # Errors
/// The file exists (never overwritten), cannot be created or written, or
/// the OS gives no randomness. A partly written file is removed.
pub fn generate_key_file(path: &Path) -> Result<KeyId, KeyFileError> {
    let err = |kind| KeyFileError {
        path: path.to_path_buf(),
        kind,
    };
    let bytes = random_key_bytes().ok_or_else(|| err(KeyFileErrorKind::NoRandomness))?;
    let key = Key::from_bytes(&bytes);
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(|e| {
            err(if e.kind() == std::io::ErrorKind::AlreadyExists {
                KeyFileErrorKind::Exists
            } else {
                KeyFileErrorKind::Uncreatable(e.kind())
            })
        })?;
    let text = format!(
        "# mpx pre-shared key, key id {}; keep it secret (mode 0600)\n{}\n",
        key.id(),
        base64_encode(&bytes)
    );
    // the umask may have cleared owner bits: set 0600 on the open file
    let written = file
        .set_permissions(std::fs::Permissions::from_mode(0o600))
        .and_then(|()| file.write_all(text.as_bytes()))
        .and_then(|()| file.sync_all());
    if let Err(e) = written {
        drop(file);
        let _ = std::fs::remove_file(path);
        return Err(err(KeyFileErrorKind::Uncreatable(e.kind())));
    }
    Ok(key.id())
}

/// Why the text of a key file holds no usable key
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum KeyTextError {
    /// Only blank lines and comments
    #[error("holds no key (expected one line: 64 hex digits or 44 base64 characters)")]
    Empty,
    /// A second key line
    #[error("line {line}: a second key (one key per file; give --key-file again for more keys)")]
    MultipleKeys {
        /// 1-based line number
        line: usize,
    },
    /// A character that is neither hex nor base64
    #[error("line {line}: character {ch:?} is neither hex nor base64")]
    BadCharacter {
        /// 1-based line number
        line: usize,
        /// The offending character
        ch: char,
    },
    /// Base64 that is not the canonical encoding of whole bytes
    #[error("line {line}: not valid base64 (bad length, padding or final character)")]
    BadBase64 {
        /// 1-based line number
        line: usize,
    },
    /// Decodes to the wrong number of bytes
    #[error("line {line}: the key is {bytes} bytes, a key is 32 (64 hex digits or 44 base64 characters)")]
    WrongLength {
        /// 1-based line number
        line: usize,
        /// Decoded length
        bytes: usize,
    },
}

/// Parse the text of a key file into the key's 32 bytes
///
/// `#` starts a comment that runs to the end of the line; blank lines are
/// ignored; exactly one line remains, holding the key as 64 hex digits
/// (either case) or as base64 (standard or URL-safe alphabet, with or
/// without `=` padding: 44 or 43 characters).
///
/// # Errors
/// [`KeyTextError`], naming the line.
pub fn parse_key_text(text: &str) -> Result<[u8; KEY_LEN], KeyTextError> {
    let mut found: Option<(usize, &str)> = None;
    for (i, line) in text.lines().enumerate() {
        let content = line.split('#').next().unwrap_or("").trim();
        if content.is_empty() {
            continue;
        }
        if found.is_some() {
            return Err(KeyTextError::MultipleKeys { line: i + 1 });
        }
        found = Some((i + 1, content));
    }
    let (line, s) = found.ok_or(KeyTextError::Empty)?;
    if let Some(ch) = s.chars().find(|c| !is_key_char(*c)) {
        return Err(KeyTextError::BadCharacter { line, ch });
    }
    let bytes = if s.len() == 2 * KEY_LEN && s.bytes().all(|b| b.is_ascii_hexdigit()) {
        hex_decode(s)
    } else if s.bytes().all(|b| b.is_ascii_hexdigit()) && s.len() != 43 && s.len() != 44 {
        // hex of the wrong length (43/44 hex-looking characters are base64)
        return Err(KeyTextError::WrongLength {
            line,
            bytes: s.len() / 2,
        });
    } else {
        base64_decode(s).ok_or(KeyTextError::BadBase64 { line })?
    };
    <[u8; KEY_LEN]>::try_from(bytes.as_slice()).map_err(|_| KeyTextError::WrongLength {
        line,
        bytes: bytes.len(),
    })
}

fn is_key_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '+' | '/' | '-' | '_' | '=')
}

fn hex_decode(s: &str) -> Vec<u8> {
    // callers checked that every byte is a hex digit
    let nib = |b: u8| char::from(b).to_digit(16).unwrap_or(0) as u8;
    s.as_bytes()
        .chunks_exact(2)
        .map(|p| (nib(p[0]) << 4) | nib(p[1]))
        .collect()
}

const B64: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

fn base64_encode(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let mut b = [0u8; 3];
        b[..chunk.len()].copy_from_slice(chunk);
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(char::from(B64[((n >> (18 - 6 * i)) & 0x3f) as usize]));
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// Strict base64: standard or URL-safe alphabet, padding optional but
/// consistent, unused bits of the last character zero
fn base64_decode(s: &str) -> Option<Vec<u8>> {
    let trimmed = s.trim_end_matches('=');
    let pad = s.len() - trimmed.len();
    if pad > 2 || (pad > 0 && s.len() % 4 != 0) || trimmed.len() % 4 == 1 {
        return None;
    }
    let val = |c: u8| -> Option<u32> {
        Some(match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' | b'-' => 62,
            b'/' | b'_' => 63,
            _ => return None,
        } as u32)
    };
    let mut out = Vec::with_capacity(trimmed.len() * 3 / 4);
    for chunk in trimmed.as_bytes().chunks(4) {
        let mut n = 0u32;
        for (i, &c) in chunk.iter().enumerate() {
            n |= val(c)? << (18 - 6 * i);
        }
        let full = chunk.len() - 1; // bytes this chunk carries
        let bytes = n.to_be_bytes();
        // the bits after the last whole byte must be zero (canonical form)
        let used_bits = 8 * full;
        if used_bits < 24 && n & ((1u32 << (24 - used_bits)) - 1) != 0 {
            return None;
        }
        out.extend_from_slice(&bytes[1..1 + full]);
    }
    Some(out)
}

/// What is wrong with a key file (the `Display` of [`KeyFileError`] adds
/// the file name and says what to do)
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum KeyFileErrorKind {
    /// No such file
    NotFound,
    /// It cannot be opened or read
    Unreadable(std::io::ErrorKind),
    /// A directory or a device, not a file
    NotRegular,
    /// Group or others may read or write it (the mode bits)
    Permissions(u32),
    /// Larger than [`KEY_FILE_MAX_LEN`]
    TooLarge,
    /// Not UTF-8 text
    NotText,
    /// The text holds no usable key
    Text(KeyTextError),
    /// keygen: the file exists
    Exists,
    /// keygen: the file cannot be created or written
    Uncreatable(std::io::ErrorKind),
    /// keygen: the OS gave no randomness
    NoRandomness,
    /// The same key as an earlier file of the keyring
    Duplicate(KeyId),
}

/// A key file that cannot be used: the file and why, in one line that
/// says how to fix it (binaries print it and exit 2)
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyFileError {
    /// The file
    pub path: PathBuf,
    /// What is wrong
    pub kind: KeyFileErrorKind,
}

impl fmt::Display for KeyFileError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let p = self.path.display();
        write!(f, "key file {p}: ")?;
        match self.kind {
            KeyFileErrorKind::NotFound => {
                write!(f, "no such file (make a key with --keygen {p})")
            }
            KeyFileErrorKind::Unreadable(k) => write!(f, "cannot read it: {k}"),
            KeyFileErrorKind::NotRegular => write!(f, "not a regular file"),
            KeyFileErrorKind::Permissions(mode) => write!(
                f,
                "readable or writable by group or others (mode {mode:04o}); run: chmod 600 {p}"
            ),
            KeyFileErrorKind::TooLarge => write!(
                f,
                "larger than {KEY_FILE_MAX_LEN} bytes (a key file holds one key line)"
            ),
            KeyFileErrorKind::NotText => write!(f, "not text (expected hex or base64)"),
            KeyFileErrorKind::Text(e) => write!(f, "{e}"),
            KeyFileErrorKind::Exists => write!(f, "already exists; not overwritten"),
            KeyFileErrorKind::Uncreatable(k) => write!(f, "cannot create it: {k}"),
            KeyFileErrorKind::NoRandomness => write!(f, "the OS gave no random bytes"),
            KeyFileErrorKind::Duplicate(id) => write!(
                f,
                "the same key (id {id}) as an earlier --key-file; give each key once"
            ),
        }
    }
}

impl std::error::Error for KeyFileError {}

/// A keyring that cannot be built
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum KeyringError {
    /// No key at all
    #[error("a keyring needs at least one key")]
    Empty,
    /// Two keys with the same key id (the same key twice, or a 2^-24 clash:
    /// generate another key)
    #[error("two keys with key id {0}: give each key once (or generate a new key)")]
    DuplicateId(KeyId),
}

/// The keys of a group: a sender seals with the first, receivers accept any
#[derive(Debug, Clone)]
pub struct Keyring {
    keys: Vec<Key>,
}

impl Keyring {
    /// A keyring of these keys, the sending key first
    ///
    /// # Errors
    /// No key, or two keys with the same id.
    pub fn new(keys: Vec<Key>) -> Result<Self, KeyringError> {
        if keys.is_empty() {
            return Err(KeyringError::Empty);
        }
        for (i, k) in keys.iter().enumerate() {
            if keys[..i].iter().any(|o| o.id == k.id) {
                return Err(KeyringError::DuplicateId(k.id));
            }
        }
        Ok(Self { keys })
    }

    /// Load key files in order (the first is the sending key)
    ///
    /// # Errors
    /// The first file that cannot be used ([`Key::load`]) or that holds a
    /// key given before; `Ok(None)` when `paths` is empty (no key: unkeyed).
    pub fn load_files<P: AsRef<Path>>(paths: &[P]) -> Result<Option<Self>, KeyFileError> {
        let mut keys: Vec<Key> = Vec::with_capacity(paths.len());
        for p in paths {
            let p = p.as_ref();
            let key = Key::load(p)?;
            if keys.iter().any(|k| k.id == key.id) {
                return Err(KeyFileError {
                    path: p.to_path_buf(),
                    kind: KeyFileErrorKind::Duplicate(key.id),
                });
            }
            keys.push(key);
        }
        Ok(if keys.is_empty() {
            None
        } else {
            Some(Self { keys })
        })
    }

    /// The sending key
    pub fn first(&self) -> &Key {
        // `new` and `load_files` never build an empty keyring
        &self.keys[0]
    }

    /// All keys, the sending key first
    pub fn keys(&self) -> &[Key] {
        &self.keys
    }

    /// The key with this id
    pub fn get(&self, id: KeyId) -> Option<&Key> {
        self.keys.iter().find(|k| k.id == id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// A fresh private directory, removed on drop
    struct TempDir(PathBuf);

    impl TempDir {
        fn new() -> Self {
            static N: AtomicUsize = AtomicUsize::new(0);
            let p = std::env::temp_dir().join(format!(
                "mproxy-keys-{}-{}",
                std::process::id(),
                N.fetch_add(1, Ordering::Relaxed)
            ));
            std::fs::create_dir_all(&p).unwrap();
            Self(p)
        }

        fn file(&self, name: &str, text: &str, mode: u32) -> PathBuf {
            let p = self.0.join(name);
            std::fs::write(&p, text).unwrap();
            std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode)).unwrap();
            p
        }
    }

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    const HEX: &str = "000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f";
    const B64: &str = "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=";

    fn zero_to_31() -> [u8; 32] {
        let mut k = [0u8; 32];
        for (i, b) in k.iter_mut().enumerate() {
            *b = i as u8;
        }
        k
    }

    #[test]
    fn test_parse_key_text_table() {
        let k = zero_to_31();
        let ok: &[&str] = &[
            HEX,
            &HEX.to_uppercase(),
            B64,
            B64.trim_end_matches('='),
            "# comment\n\n  AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=  # trailing\n\n",
            "\r\n# windows line ends\r\n000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f\r\n",
        ];
        for t in ok {
            assert_eq!(parse_key_text(t), Ok(k), "{t:?}");
        }
        // URL-safe base64 of bytes that use the 62/63 digits
        assert_eq!(
            parse_key_text("-_-_-_-_-_-_-_-_-_-_-_-_-_-_-_-_-_-_-_-_-_8="),
            parse_key_text("+/+/+/+/+/+/+/+/+/+/+/+/+/+/+/+/+/+/+/+/+/8=")
        );
        use KeyTextError as E;
        let bad: &[(&str, KeyTextError)] = &[
            ("", E::Empty),
            ("# only a comment\n\n", E::Empty),
            (&format!("{HEX}\n{B64}\n"), E::MultipleKeys { line: 2 }),
            (&HEX[..62], E::WrongLength { line: 1, bytes: 31 }),
            (&format!("{HEX}00"), E::WrongLength { line: 1, bytes: 33 }),
            (
                "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHg==",
                E::WrongLength { line: 1, bytes: 31 },
            ),
            (
                &format!("\n{}", &HEX.replace('0', "g")),
                E::WrongLength { line: 2, bytes: 48 },
            ),
            ("0001 0203", E::BadCharacter { line: 1, ch: ' ' }),
            ("key: 00", E::BadCharacter { line: 1, ch: ':' }),
            (
                "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh9=",
                E::BadBase64 { line: 1 },
            ),
            (
                "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8==",
                E::BadBase64 { line: 1 },
            ),
            (
                "A=ECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=",
                E::BadBase64 { line: 1 },
            ),
        ];
        for (t, want) in bad {
            assert_eq!(parse_key_text(t), Err(*want), "{t:?}");
        }
    }

    #[test]
    fn test_base64_round_trip() {
        for n in 0..40usize {
            let bytes: Vec<u8> = (0..n).map(|i| (i * 37 + 11) as u8).collect();
            let enc = base64_encode(&bytes);
            assert_eq!(enc.len() % 4, 0);
            assert_eq!(base64_decode(&enc), Some(bytes.clone()), "{enc}");
            assert_eq!(base64_decode(enc.trim_end_matches('=')), Some(bytes));
        }
        assert_eq!(base64_encode(&zero_to_31()), B64);
    }

    #[test]
    fn test_load_key_files() {
        let d = TempDir::new();
        let good = d.file("good", &format!("# group key\n{HEX}\n"), 0o600);
        let key = Key::load(&good).unwrap();
        assert_eq!(key.id(), Key::from_bytes(&zero_to_31()).id());
        assert!(Key::load(&d.file("ro", B64, 0o400)).is_ok());

        let err = |p: &Path| Key::load(p).unwrap_err();
        let e = err(&d.file("open", HEX, 0o644));
        assert_eq!(e.kind, KeyFileErrorKind::Permissions(0o644));
        let msg = e.to_string();
        assert!(
            msg.contains("chmod 600") && msg.contains(&*d.0.join("open").to_string_lossy()),
            "{msg}"
        );
        assert!(!msg.contains('\n'));
        assert_eq!(
            err(&d.file("grp", HEX, 0o640)).kind,
            KeyFileErrorKind::Permissions(0o640)
        );
        assert_eq!(
            err(&d.file("gw", HEX, 0o620)).kind,
            KeyFileErrorKind::Permissions(0o620)
        );
        assert_eq!(err(&d.0.join("missing")).kind, KeyFileErrorKind::NotFound);
        assert!(err(&d.0.join("missing")).to_string().contains("--keygen"));
        assert_eq!(err(&d.0).kind, KeyFileErrorKind::NotRegular);
        assert_eq!(
            err(&d.file("short", &HEX[..60], 0o600)).kind,
            KeyFileErrorKind::Text(KeyTextError::WrongLength { line: 1, bytes: 30 })
        );
        assert_eq!(
            err(&d.file("empty", "", 0o600)).kind,
            KeyFileErrorKind::Text(KeyTextError::Empty)
        );
        let big = "#".repeat(KEY_FILE_MAX_LEN as usize + 1);
        assert_eq!(
            err(&d.file("big", &big, 0o600)).kind,
            KeyFileErrorKind::TooLarge
        );
        let bin = d.0.join("bin");
        std::fs::write(&bin, [0xffu8, 0xfe, 0x00]).unwrap();
        std::fs::set_permissions(&bin, std::fs::Permissions::from_mode(0o600)).unwrap();
        assert_eq!(err(&bin).kind, KeyFileErrorKind::NotText);
    }

    #[test]
    fn test_keygen_and_keyring() {
        let d = TempDir::new();
        let a = d.0.join("a.key");
        let b = d.0.join("b.key");
        let id_a = generate_key_file(&a).unwrap();
        let id_b = generate_key_file(&b).unwrap();
        assert_ne!(id_a, id_b);
        let meta = std::fs::metadata(&a).unwrap();
        assert_eq!(meta.permissions().mode() & 0o777, 0o600);
        let text = std::fs::read_to_string(&a).unwrap();
        assert!(text.contains(&id_a.to_string()), "{text}");
        assert_eq!(Key::load(&a).unwrap().id(), id_a);
        // never overwritten
        let e = generate_key_file(&a).unwrap_err();
        assert_eq!(e.kind, KeyFileErrorKind::Exists);
        assert_eq!(std::fs::read_to_string(&a).unwrap(), text);
        let e = generate_key_file(&d.0.join("no/such/dir")).unwrap_err();
        assert!(matches!(e.kind, KeyFileErrorKind::Uncreatable(_)), "{e}");

        let ring = Keyring::load_files(&[&b, &a]).unwrap().unwrap();
        assert_eq!(ring.first().id(), id_b);
        assert_eq!(ring.keys().len(), 2);
        assert_eq!(ring.get(id_a).map(Key::id), Some(id_a));
        assert!(Keyring::load_files::<&Path>(&[]).unwrap().is_none());
        let e = Keyring::load_files(&[&a, &b, &a]).unwrap_err();
        assert_eq!(e.kind, KeyFileErrorKind::Duplicate(id_a));
        assert_eq!(e.path, a);
        assert_eq!(Keyring::new(vec![]).unwrap_err(), KeyringError::Empty);
        let k = Key::load(&a).unwrap();
        assert_eq!(
            Keyring::new(vec![k.clone(), k]).unwrap_err(),
            KeyringError::DuplicateId(id_a)
        );
        // a key's Debug never shows the key
        assert_eq!(format!("{:?}", ring.first()), format!("Key({id_b})"));
    }
}
