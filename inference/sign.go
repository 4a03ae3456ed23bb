package inference

import (
	"bufio"
	"bytes"
	"crypto/ed25519"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sort"
	"strings"
)

// Signing a bundle
//
// The signature covers the canonical manifest, not the file's bytes, so that
// re-indenting manifest.json does not invalidate it. The canonical manifest
// is computed from the manifest JSON text by:
//
//  1. parsing it (duplicate keys are an error);
//  2. removing the top-level "signature" key (and nothing else: "signer" is
//     signed);
//  3. writing it back with object keys sorted by their UTF-8 bytes at every
//     level, no whitespace between tokens, numbers exactly as written in the
//     source text, and strings escaped minimally: \" \\ \b \f \n \r \t,
//     other control characters as \u00XX, U+2028/U+2029 as \u2028/\u2029,
//     invalid UTF-8 as \ufffd, everything else (non-ASCII, <>&) as raw
//     UTF-8. This is encoding/json's output with HTML escaping off; it equals
//     Python's json.dumps(obj, sort_keys=True, separators=(",", ":"),
//     ensure_ascii=False) for a manifest without U+2028/U+2029 whose numbers
//     Python writes back unchanged.
//
// The signature is ed25519 (RFC 8032, pure) over those bytes, stored base64
// (standard alphabet, padded) in "signature"; "signer" holds the public key
// in the same encoding. Files are bound to the manifest through their sha256
// in "files", so the signature covers every file of the bundle.

// Key files: a public key file holds one base64 ed25519 public key per line;
// text after the key on the same line, blank lines and lines starting with #
// are ignored. A private key file holds the base64 64-byte ed25519 private
// key on its first non-comment line and must not be readable by group or
// others.

// CanonicalManifest returns the bytes the manifest signature covers (see the
// comment at the top of sign.go).
func CanonicalManifest(manifestJSON []byte) ([]byte, error) {
	if err := checkJSONKeys(manifestJSON); err != nil {
		return nil, fmt.Errorf("%w: %s: %v", ErrManifest, ManifestFile, err)
	}
	dec := json.NewDecoder(bytes.NewReader(manifestJSON))
	dec.UseNumber()
	var v map[string]any
	if err := dec.Decode(&v); err != nil {
		return nil, fmt.Errorf("%w: %s: %v", ErrManifest, ManifestFile, err)
	}
	if v == nil {
		return nil, fmt.Errorf("%w: %s: top level must be a JSON object", ErrManifest, ManifestFile)
	}
	delete(v, "signature")
	var buf bytes.Buffer
	enc := json.NewEncoder(&buf)
	// encoding/json sorts map keys and writes json.Number verbatim; only its
	// HTML escaping has to be turned off to get the documented form.
	enc.SetEscapeHTML(false)
	if err := enc.Encode(v); err != nil {
		return nil, fmt.Errorf("%w: %s: %v", ErrManifest, ManifestFile, err)
	}
	return bytes.TrimSuffix(buf.Bytes(), []byte("\n")), nil
}

// Sign sets m.Signer and m.Signature: ed25519 by priv over the canonical form
// of m as MarshalManifest writes it.
func Sign(m *Manifest, priv ed25519.PrivateKey) error {
	if len(priv) != ed25519.PrivateKeySize {
		return fmt.Errorf("%w: private key must be %d bytes, got %d", ErrKey, ed25519.PrivateKeySize, len(priv))
	}
	c := *m
	c.Signer = base64.StdEncoding.EncodeToString(priv.Public().(ed25519.PublicKey))
	c.Signature = ""
	raw, err := MarshalManifest(&c)
	if err != nil {
		return err
	}
	canon, err := CanonicalManifest(raw)
	if err != nil {
		return err
	}
	m.Signer = c.Signer
	m.Signature = base64.StdEncoding.EncodeToString(ed25519.Sign(priv, canon))
	return nil
}

// MarshalManifest writes m the way `scopewatch bundle seal` stores it:
// indented by two spaces, fields in declaration order, no HTML escaping, a
// final newline. The output is deterministic for a given m.
func MarshalManifest(m *Manifest) ([]byte, error) {
	var buf bytes.Buffer
	enc := json.NewEncoder(&buf)
	enc.SetEscapeHTML(false)
	enc.SetIndent("", "  ")
	if err := enc.Encode(m); err != nil {
		return nil, fmt.Errorf("encode manifest: %w", err)
	}
	return buf.Bytes(), nil
}

// VerifyManifestSignature checks the signature of manifestJSON, already
// accepted by ParseManifest as m, against trusted. It returns the signer's
// key. ErrUnsigned: no signature; ErrUntrusted: signed by a key not in
// trusted; ErrSignature: the signature does not match the content (altered
// after signing, or forged).
func VerifyManifestSignature(manifestJSON []byte, m *Manifest, trusted []ed25519.PublicKey) (ed25519.PublicKey, error) {
	if m.Signature == "" {
		return nil, fmt.Errorf("%w: %s has no signature (seal it with `scopewatch bundle seal`)", ErrUnsigned, ManifestFile)
	}
	signer, err := decodeKey(m.Signer, ed25519.PublicKeySize)
	if err != nil {
		return nil, fmt.Errorf("%w: %s: field \"signer\": %v", ErrSignature, ManifestFile, err)
	}
	sig, err := decodeKey(m.Signature, ed25519.SignatureSize)
	if err != nil {
		return nil, fmt.Errorf("%w: %s: field \"signature\": %v", ErrSignature, ManifestFile, err)
	}
	canon, err := CanonicalManifest(manifestJSON)
	if err != nil {
		return nil, err
	}
	// The signature is checked before trust so that an altered manifest is
	// reported as such even when its signer is unknown.
	if !ed25519.Verify(signer, canon, sig) {
		return nil, fmt.Errorf("%w: %s: field \"signature\" does not match the manifest content for signer %s (the manifest was changed after signing)", ErrSignature, ManifestFile, m.Signer)
	}
	for _, k := range trusted {
		if bytes.Equal(k, signer) {
			return ed25519.PublicKey(signer), nil
		}
	}
	return nil, fmt.Errorf("%w: %s is signed by %s, which is not among the %d trusted key(s)", ErrUntrusted, ManifestFile, m.Signer, len(trusted))
}

// GenerateKey makes an ed25519 key pair from rng (crypto/rand.Reader when nil).
func GenerateKey(rng io.Reader) (ed25519.PublicKey, ed25519.PrivateKey, error) {
	if rng == nil {
		rng = rand.Reader
	}
	pub, priv, err := ed25519.GenerateKey(rng)
	if err != nil {
		return nil, nil, fmt.Errorf("generate ed25519 key: %w", err)
	}
	return pub, priv, nil
}

// WriteKeyPair writes prefix.key (private, mode 0600) and prefix.pub. It
// refuses to overwrite an existing private key.
func WriteKeyPair(prefix, comment string, pub ed25519.PublicKey, priv ed25519.PrivateKey) error {
	keyPath, pubPath := prefix+".key", prefix+".pub"
	if comment == "" {
		comment = filepath.Base(prefix)
	}
	comment = strings.ReplaceAll(comment, "\n", " ")
	f, err := os.OpenFile(keyPath, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return fmt.Errorf("write private key: %w", err)
	}
	_, err = fmt.Fprintf(f, "# scopewatch ed25519 bundle signing key %s: keep secret\n%s\n", comment, base64.StdEncoding.EncodeToString(priv))
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		os.Remove(keyPath)
		return fmt.Errorf("write private key: %w", err)
	}
	pubText := fmt.Sprintf("# scopewatch ed25519 bundle signing key %s\n%s\n", comment, base64.StdEncoding.EncodeToString(pub))
	if err := os.WriteFile(pubPath, []byte(pubText), 0o644); err != nil {
		return fmt.Errorf("write public key: %w", err)
	}
	return nil
}

// LoadPrivateKey reads a private key file written by WriteKeyPair.
func LoadPrivateKey(path string) (ed25519.PrivateKey, error) {
	st, err := os.Stat(path)
	if err != nil {
		return nil, fmt.Errorf("%w: %v", ErrKey, err)
	}
	if st.Mode().Perm()&0o077 != 0 {
		return nil, fmt.Errorf("%w: %s: mode %v lets others read the private key; run chmod 600 %s", ErrKey, path, st.Mode().Perm(), path)
	}
	lines, err := readKeyLines(path)
	if err != nil {
		return nil, err
	}
	if len(lines) != 1 {
		return nil, fmt.Errorf("%w: %s: want exactly one key line, found %d", ErrKey, path, len(lines))
	}
	b, err := decodeKey(lines[0].key, ed25519.PrivateKeySize)
	if err != nil {
		return nil, fmt.Errorf("%w: %s line %d: %v", ErrKey, path, lines[0].n, err)
	}
	priv := ed25519.PrivateKey(b)
	// A private key whose second half is not its public key would sign with
	// one key and claim another.
	if !bytes.Equal(ed25519.NewKeyFromSeed(priv.Seed()), priv) {
		return nil, fmt.Errorf("%w: %s: not a consistent ed25519 private key", ErrKey, path)
	}
	return priv, nil
}

// LoadPublicKeys reads trusted public keys from a key file, or from every
// *.pub file of a directory (sorted by name). A directory without keys is an
// error: trusting nothing by accident would reject every bundle with a
// misleading message.
func LoadPublicKeys(path string) ([]ed25519.PublicKey, error) {
	st, err := os.Stat(path)
	if err != nil {
		return nil, fmt.Errorf("%w: %v", ErrKey, err)
	}
	files := []string{path}
	if st.IsDir() {
		files, err = filepath.Glob(filepath.Join(path, "*.pub"))
		if err != nil {
			return nil, fmt.Errorf("%w: %v", ErrKey, err)
		}
		sort.Strings(files)
	}
	var keys []ed25519.PublicKey
	for _, f := range files {
		ks, err := readPublicKeyFile(f)
		if err != nil {
			return nil, err
		}
		keys = append(keys, ks...)
	}
	if len(keys) == 0 {
		return nil, fmt.Errorf("%w: no public keys found in %s", ErrKey, path)
	}
	return keys, nil
}

func readPublicKeyFile(path string) ([]ed25519.PublicKey, error) {
	lines, err := readKeyLines(path)
	if err != nil {
		return nil, err
	}
	var keys []ed25519.PublicKey
	for _, l := range lines {
		b, err := decodeKey(l.key, ed25519.PublicKeySize)
		if err != nil {
			return nil, fmt.Errorf("%w: %s line %d: %v", ErrKey, path, l.n, err)
		}
		keys = append(keys, ed25519.PublicKey(b))
	}
	return keys, nil
}

// readKeyLines reads a key file's key lines; errors wrap ErrKey.
func readKeyLines(path string) ([]keyLine, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("%w: %v", ErrKey, err)
	}
	lines, err := keyLines(data)
	if err != nil {
		return nil, fmt.Errorf("%w: %s: %v", ErrKey, path, err)
	}
	return lines, nil
}

type keyLine struct {
	n   int
	key string
}

func keyLines(data []byte) ([]keyLine, error) {
	if len(data) > 1<<20 {
		return nil, errors.New("key file larger than 1 MiB")
	}
	var out []keyLine
	sc := bufio.NewScanner(bytes.NewReader(data))
	n := 0
	for sc.Scan() {
		n++
		line := strings.TrimSpace(sc.Text())
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		out = append(out, keyLine{n: n, key: strings.Fields(line)[0]})
	}
	return out, sc.Err()
}

// FormatPublicKey returns the base64 form used in key files and in the
// manifest's "signer" field.
func FormatPublicKey(k ed25519.PublicKey) string {
	return base64.StdEncoding.EncodeToString(k)
}

// DefaultKeysPath is where trusted bundle keys are looked for when the
// configuration names none: /etc/scopewatch/keys on an installed device, else
// models/keys of this project's source tree (found with ModuleRoot, so that
// tests and `make demo` find it). It returns "" when neither exists.
func DefaultKeysPath() string {
	if st, err := os.Stat("/etc/scopewatch/keys"); err == nil && st.IsDir() {
		return "/etc/scopewatch/keys"
	}
	root, ok := ModuleRoot()
	if !ok {
		return ""
	}
	p := filepath.Join(root, "models", "keys")
	if st, err := os.Stat(p); err == nil && st.IsDir() {
		return p
	}
	return ""
}

// SealBundle makes dir a signed bundle: it lists every file of dir except
// manifest.json with its sha256 in "files", signs the manifest with priv
// and rewrites manifest.json (MarshalManifest form) atomically. The manifest
// must otherwise be complete and valid; "files", "signer" and "signature"
// are replaced.
func SealBundle(dir string, priv ed25519.PrivateKey) (*Manifest, error) {
	mpath := filepath.Join(dir, ManifestFile)
	raw, err := readFileLimit(mpath, maxManifestSize)
	if err != nil {
		return nil, fmt.Errorf("seal %s: %w: %v", dir, ErrManifest, err)
	}
	m, err := decodeManifest(raw, false)
	if err != nil {
		return nil, fmt.Errorf("seal %s: %w", dir, err)
	}
	entries, err := os.ReadDir(dir)
	if err != nil {
		return nil, fmt.Errorf("seal %s: %w", dir, err)
	}
	m.Files = map[string]string{}
	for _, e := range entries {
		name := e.Name()
		if name == ManifestFile {
			continue
		}
		if !e.Type().IsRegular() {
			return nil, fmt.Errorf("seal %s: %s is a %v; a bundle holds regular files only", dir, name, e.Type())
		}
		if err := checkFileName(name); err != nil {
			return nil, fmt.Errorf("seal %s: %s: %v", dir, name, err)
		}
		sum, err := hashFile(filepath.Join(dir, name))
		if err != nil {
			return nil, fmt.Errorf("seal %s: %w", dir, err)
		}
		m.Files[name] = sum
	}
	m.Signer, m.Signature = "", ""
	if err := m.Validate(); err != nil {
		return nil, fmt.Errorf("seal %s: %w", dir, err)
	}
	if err := Sign(m, priv); err != nil {
		return nil, fmt.Errorf("seal %s: %w", dir, err)
	}
	out, err := MarshalManifest(m)
	if err != nil {
		return nil, fmt.Errorf("seal %s: %w", dir, err)
	}
	if err := writeFileAtomic(mpath, out, 0o644); err != nil {
		return nil, fmt.Errorf("seal %s: %w", dir, err)
	}
	return m, nil
}

func hashFile(p string) (string, error) {
	f, err := os.Open(p)
	if err != nil {
		return "", err
	}
	defer f.Close()
	h := sha256.New()
	if _, err := io.Copy(h, f); err != nil {
		return "", fmt.Errorf("hash %s: %w", p, err)
	}
	return hex.EncodeToString(h.Sum(nil)), nil
}

// writeFileAtomic replaces p with data so that a crash leaves either the old
// or the new file, never a torn one.
func writeFileAtomic(p string, data []byte, perm os.FileMode) error {
	tmp, err := os.CreateTemp(filepath.Dir(p), "."+filepath.Base(p)+".tmp-")
	if err != nil {
		return err
	}
	defer os.Remove(tmp.Name())
	if _, err := tmp.Write(data); err != nil {
		tmp.Close()
		return err
	}
	if err := tmp.Chmod(perm); err != nil {
		tmp.Close()
		return err
	}
	if err := tmp.Sync(); err != nil {
		tmp.Close()
		return err
	}
	if err := tmp.Close(); err != nil {
		return err
	}
	if err := os.Rename(tmp.Name(), p); err != nil {
		return err
	}
	if d, err := os.Open(filepath.Dir(p)); err == nil {
		d.Sync()
		d.Close()
	}
	return nil
}
