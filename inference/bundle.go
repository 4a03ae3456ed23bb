package inference

import (
	"archive/tar"
	"bufio"
	"bytes"
	"compress/gzip"
	"crypto/ed25519"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"maps"
	"os"
	"path"
	"path/filepath"
	"slices"
	"strings"
	"time"
)

// Errors callers branch on. Every error OpenBundle returns wraps exactly one
// of them and names the bundle, the file and, for manifest problems, the
// field.
var (
	// ErrManifest: manifest.json is unreadable, malformed or holds an
	// invalid value.
	ErrManifest = errors.New("invalid bundle manifest")
	// ErrMissingFile: a file the bundle needs (manifest.json or one listed
	// in files) is absent, not a regular file, or larger than allowed.
	ErrMissingFile = errors.New("bundle file missing")
	// ErrHashMismatch: a file's sha256 differs from the one in files.
	ErrHashMismatch = errors.New("bundle file sha256 mismatch")
	// ErrUnlistedFile: the bundle holds a file its manifest does not list,
	// so it was not covered by the signature.
	ErrUnlistedFile = errors.New("bundle holds an unlisted file")
	// ErrUnsigned: the manifest has no signature and unsigned bundles are
	// not allowed.
	ErrUnsigned = errors.New("bundle not signed")
	// ErrSignature: the signature does not verify: the manifest was altered
	// after signing or the signature is corrupt.
	ErrSignature = errors.New("bundle signature invalid")
	// ErrUntrusted: the signature is valid but made by a key that is not
	// among the trusted keys.
	ErrUntrusted = errors.New("bundle signed by an untrusted key")
	// ErrNoTrustedKeys: a signature must be checked but no trusted key is
	// configured.
	ErrNoTrustedKeys = errors.New("no trusted bundle keys configured")
	// ErrArchive: a .tar bundle is malformed or unsafe (path traversal,
	// links, oversized members).
	ErrArchive = errors.New("invalid bundle archive")
	// ErrHead: head.safetensors does not hold the expected head.
	ErrHead = errors.New("invalid classifier head")
	// ErrSafetensors: a safetensors file is malformed.
	ErrSafetensors = errors.New("invalid safetensors file")
	// ErrKey: a key file is unreadable or malformed.
	ErrKey = errors.New("invalid key file")
)

// Default size limits for OpenBundle.
const (
	DefaultMaxBundleFile  = 1 << 30 // one file of a bundle
	DefaultMaxBundleTotal = 2 << 30 // all members of a .tar bundle
	maxTarMembers         = 256
)

// BundleOptions configures OpenBundle.
type BundleOptions struct {
	// TrustedKeys are the public keys a bundle signature must come from.
	TrustedKeys []ed25519.PublicKey
	// AllowUnsigned accepts, for development, a bundle without a signature,
	// or a signed one when no trusted key is configured (its signature is
	// still checked against its own signer, so an altered manifest is still
	// rejected). A signature made by a key outside TrustedKeys is always
	// rejected.
	AllowUnsigned bool
	// TempDir is where a .tar bundle is extracted (os.TempDir() when empty).
	TempDir string
	// MaxFileSize bounds each file (DefaultMaxBundleFile when 0).
	MaxFileSize int64
	// MaxTotalSize bounds the sum of a .tar's members (DefaultMaxBundleTotal
	// when 0).
	MaxTotalSize int64
}

// Bundle is a verified model bundle (DESIGN.md §3). When opened from a .tar
// it lives in a temporary directory that Close removes.
type Bundle struct {
	// Dir is the directory holding the bundle's files.
	Dir string
	// Source is the path OpenBundle was given (directory or archive).
	Source   string
	Manifest *Manifest
	// ManifestSHA256 is the hex sha256 of manifest.json as read; it
	// identifies the exact bundle (the files' hashes are inside it).
	ManifestSHA256 string
	// Head is the Go classifier head, or nil when the manifest's head is
	// null (the ONNX model outputs probabilities itself).
	Head *Head
	// BackbonePath is the path of backbone.onnx.
	BackbonePath string
	// HeadPath and BaselinePath are "" when the manifest names none.
	HeadPath     string
	BaselinePath string
	// PositiveIndex is the index of "parasitized" in Manifest.Classes.
	PositiveIndex int
	// Signer is the trusted key that signed the manifest; nil when the
	// bundle was accepted unsigned or unverified under AllowUnsigned.
	Signer ed25519.PublicKey

	maxFile int64
	tempDir string
}

// OpenBundle verifies the bundle at path (a directory, or a .tar/.tar.gz of
// one) and loads its head. Checks, in order: manifest.json present and
// strictly valid; signature (see BundleOptions); no unlisted files; every
// listed file present, regular and matching its sha256; the head's tensor
// names and shapes against outputs.features_dim and classes. The ONNX model
// itself (names, shapes, smoke inference) is checked by the engine.
func OpenBundle(p string, opts BundleOptions) (b *Bundle, err error) {
	defer func() {
		if err != nil {
			err = fmt.Errorf("bundle %s: %w", p, err)
		}
	}()
	maxFile := opts.MaxFileSize
	if maxFile <= 0 {
		maxFile = DefaultMaxBundleFile
	}
	maxTotal := opts.MaxTotalSize
	if maxTotal <= 0 {
		maxTotal = DefaultMaxBundleTotal
	}
	st, err := os.Stat(p)
	if err != nil {
		return nil, fmt.Errorf("%w: %v", ErrMissingFile, err)
	}
	b = &Bundle{Source: p, maxFile: maxFile}
	if st.IsDir() {
		b.Dir = p
	} else {
		dir, xerr := extractBundleArchive(p, opts.TempDir, maxFile, maxTotal)
		if xerr != nil {
			return nil, xerr
		}
		b.Dir, b.tempDir = dir, dir
		defer func() {
			if err != nil {
				os.RemoveAll(dir)
			}
		}()
	}

	raw, err := readFileLimit(filepath.Join(b.Dir, ManifestFile), maxManifestSize)
	if err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			return nil, fmt.Errorf("%w: %s not found", ErrMissingFile, ManifestFile)
		}
		return nil, fmt.Errorf("%w: %s: %v", ErrManifest, ManifestFile, err)
	}
	sum := sha256.Sum256(raw)
	b.ManifestSHA256 = hex.EncodeToString(sum[:])
	m, err := ParseManifest(raw)
	if err != nil {
		return nil, err
	}
	b.Manifest = m
	b.PositiveIndex = m.ClassIndex(PositiveClass)

	switch {
	case m.Signature == "" && opts.AllowUnsigned:
	case m.Signature != "" && len(opts.TrustedKeys) == 0 && opts.AllowUnsigned:
		// Nothing to trust, but the signature still proves the manifest is
		// the one its signer sealed.
		signer, _ := decodeKey(m.Signer, ed25519.PublicKeySize)
		if _, err := VerifyManifestSignature(raw, m, []ed25519.PublicKey{signer}); err != nil {
			return nil, err
		}
	case m.Signature != "" && len(opts.TrustedKeys) == 0:
		return nil, fmt.Errorf("%w: %s is signed by %s but no trusted keys are configured (give a key file, or allow unsigned bundles for development)", ErrNoTrustedKeys, ManifestFile, m.Signer)
	default:
		if b.Signer, err = VerifyManifestSignature(raw, m, opts.TrustedKeys); err != nil {
			return nil, err
		}
	}

	if err := b.checkFiles(); err != nil {
		return nil, err
	}
	b.BackbonePath = filepath.Join(b.Dir, BackboneFile)
	if m.Baseline != "" {
		b.BaselinePath = filepath.Join(b.Dir, m.Baseline)
	}
	if m.Head != nil {
		b.HeadPath = filepath.Join(b.Dir, *m.Head)
		data, err := b.ReadFile(*m.Head)
		if err != nil {
			return nil, err
		}
		if b.Head, err = LoadHead(data, m.Outputs.FeaturesDim, len(m.Classes)); err != nil {
			return nil, fmt.Errorf("%s (field \"head\"): %w", *m.Head, err)
		}
	}
	return b, nil
}

// checkFiles compares the directory with the manifest's file list and every
// file with its sha256.
func (b *Bundle) checkFiles() error {
	entries, err := os.ReadDir(b.Dir)
	if err != nil {
		return fmt.Errorf("%w: %v", ErrMissingFile, err)
	}
	var unlisted []string
	for _, e := range entries {
		if e.Name() == ManifestFile {
			continue
		}
		if _, ok := b.Manifest.Files[e.Name()]; !ok {
			unlisted = append(unlisted, e.Name())
		}
	}
	if len(unlisted) > 0 {
		return fmt.Errorf("%w: %q not listed in %s field \"files\" (run `scopewatch bundle seal` after changing a bundle)", ErrUnlistedFile, unlisted, ManifestFile)
	}
	for _, n := range slices.Sorted(maps.Keys(b.Manifest.Files)) {
		if err := b.verifyFile(n); err != nil {
			return err
		}
	}
	return nil
}

func (b *Bundle) openListed(name string) (*os.File, string, error) {
	want, ok := b.Manifest.Files[name]
	if !ok {
		return nil, "", fmt.Errorf("%w: %s is not listed in %s field \"files\"", ErrUnlistedFile, name, ManifestFile)
	}
	p := filepath.Join(b.Dir, name)
	st, err := os.Lstat(p)
	if err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			return nil, "", fmt.Errorf("%w: %s (listed in %s field \"files\") not found", ErrMissingFile, name, ManifestFile)
		}
		return nil, "", fmt.Errorf("%w: %s: %v", ErrMissingFile, name, err)
	}
	if !st.Mode().IsRegular() {
		return nil, "", fmt.Errorf("%w: %s is a %v, not a regular file", ErrMissingFile, name, st.Mode().Type())
	}
	if st.Size() > b.maxFile {
		return nil, "", fmt.Errorf("%w: %s is %d bytes, more than the %d allowed", ErrMissingFile, name, st.Size(), b.maxFile)
	}
	f, err := os.Open(p)
	if err != nil {
		return nil, "", fmt.Errorf("%w: %s: %v", ErrMissingFile, name, err)
	}
	return f, want, nil
}

func (b *Bundle) verifyFile(name string) error {
	f, want, err := b.openListed(name)
	if err != nil {
		return err
	}
	defer f.Close()
	h := sha256.New()
	if _, err := io.Copy(h, io.LimitReader(f, b.maxFile+1)); err != nil {
		return fmt.Errorf("%w: %s: %v", ErrMissingFile, name, err)
	}
	return checkHash(name, want, h.Sum(nil))
}

func checkHash(name, want string, got []byte) error {
	if g := hex.EncodeToString(got); g != want {
		return fmt.Errorf("%w: %s has sha256 %s, %s field \"files\" says %s", ErrHashMismatch, name, g, ManifestFile, want)
	}
	return nil
}

// ReadFile reads a listed file and checks its sha256 again on the bytes it
// returns, so that a file swapped after OpenBundle cannot slip in. The engine
// can build its ONNX session from ReadFile(BackboneFile).
func (b *Bundle) ReadFile(name string) ([]byte, error) {
	f, want, err := b.openListed(name)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	data, err := io.ReadAll(io.LimitReader(f, b.maxFile+1))
	if err != nil {
		return nil, fmt.Errorf("%w: %s: %v", ErrMissingFile, name, err)
	}
	sum := sha256.Sum256(data)
	if err := checkHash(name, want, sum[:]); err != nil {
		return nil, err
	}
	return data, nil
}

// Version is the manifest's version, the model's identity in results.
func (b *Bundle) Version() string { return b.Manifest.Version }

// Close removes the temporary directory of a bundle opened from an archive.
func (b *Bundle) Close() error {
	if b == nil || b.tempDir == "" {
		return nil
	}
	err := os.RemoveAll(b.tempDir)
	b.tempDir = ""
	if err != nil {
		return fmt.Errorf("remove extracted bundle: %w", err)
	}
	return nil
}

// extractBundleArchive unpacks a .tar (optionally gzip-compressed) bundle
// into a new temporary directory. Only regular files are accepted, either at
// the archive's root or all inside one top-level folder; names must be plain
// (no "..", no absolute paths), links and devices are refused, and sizes
// are bounded before anything is written.
func extractBundleArchive(p, tempDir string, maxFile, maxTotal int64) (string, error) {
	f, err := os.Open(p)
	if err != nil {
		return "", fmt.Errorf("%w: %v", ErrMissingFile, err)
	}
	defer f.Close()
	br := bufio.NewReader(f)
	var r io.Reader = br
	if magic, _ := br.Peek(2); bytes.Equal(magic, []byte{0x1f, 0x8b}) {
		zr, err := gzip.NewReader(br)
		if err != nil {
			return "", fmt.Errorf("%w: %v", ErrArchive, err)
		}
		defer zr.Close()
		r = zr
	}
	dir, err := os.MkdirTemp(tempDir, "scopewatch-bundle-")
	if err != nil {
		return "", fmt.Errorf("extract bundle: %w", err)
	}
	if err := extractTar(r, dir, maxFile, maxTotal); err != nil {
		os.RemoveAll(dir)
		return "", err
	}
	return dir, nil
}

func extractTar(r io.Reader, dir string, maxFile, maxTotal int64) error {
	tr := tar.NewReader(r)
	prefix := "\x00" // the common top-level folder; unset until the first member
	seen := map[string]bool{}
	var total int64
	for members := 0; ; members++ {
		hdr, err := tr.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			return fmt.Errorf("%w: %v", ErrArchive, err)
		}
		if members >= maxTarMembers {
			return fmt.Errorf("%w: more than %d members", ErrArchive, maxTarMembers)
		}
		// `tar -C dir .` writes "./" and "./name": strip that prefix.
		name := strings.TrimSuffix(strings.TrimPrefix(hdr.Name, "./"), "/")
		if name == "" {
			name = "."
		}
		if strings.Contains(hdr.Name, `\`) || path.IsAbs(hdr.Name) || !fs.ValidPath(name) {
			return fmt.Errorf("%w: member %q: unsafe path", ErrArchive, hdr.Name)
		}
		dirPart, base := path.Split(name)
		dirPart = strings.TrimSuffix(dirPart, "/")
		switch hdr.Typeflag {
		case tar.TypeDir:
			if name == "." {
				continue
			}
			if strings.Contains(name, "/") {
				return fmt.Errorf("%w: member %q: nested folders are not allowed (bundles are flat)", ErrArchive, hdr.Name)
			}
			if prefix != "\x00" && prefix != name {
				return fmt.Errorf("%w: member %q: a bundle archive holds one folder at most", ErrArchive, hdr.Name)
			}
			prefix = name
			continue
		case tar.TypeReg:
		default:
			return fmt.Errorf("%w: member %q: type %q is not allowed (regular files only)", ErrArchive, hdr.Name, hdr.Typeflag)
		}
		if strings.Contains(dirPart, "/") {
			return fmt.Errorf("%w: member %q: nested folders are not allowed (bundles are flat)", ErrArchive, hdr.Name)
		}
		if prefix == "\x00" {
			prefix = dirPart
		} else if prefix != dirPart {
			return fmt.Errorf("%w: member %q: members must all sit at the root or all in one folder", ErrArchive, hdr.Name)
		}
		if base == ManifestFile {
			// allowed
		} else if err := checkFileName(base); err != nil {
			return fmt.Errorf("%w: member %q: %v", ErrArchive, hdr.Name, err)
		}
		if seen[base] {
			return fmt.Errorf("%w: member %q appears twice", ErrArchive, hdr.Name)
		}
		seen[base] = true
		if hdr.Size > maxFile {
			return fmt.Errorf("%w: member %q is %d bytes, more than the %d allowed", ErrArchive, hdr.Name, hdr.Size, maxFile)
		}
		total += hdr.Size
		if total > maxTotal {
			return fmt.Errorf("%w: members total more than %d bytes", ErrArchive, maxTotal)
		}
		out, err := os.OpenFile(filepath.Join(dir, base), os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o644)
		if err != nil {
			return fmt.Errorf("extract bundle: %w", err)
		}
		_, err = io.CopyN(out, tr, hdr.Size)
		if cerr := out.Close(); err == nil {
			err = cerr
		}
		if err != nil {
			return fmt.Errorf("%w: member %q: %v", ErrArchive, hdr.Name, err)
		}
	}
	if !seen[ManifestFile] {
		return fmt.Errorf("%w: %s not found in the archive", ErrMissingFile, ManifestFile)
	}
	return nil
}

// PackBundle writes the bundle as a deterministic tar: manifest.json then
// the listed files in name order, at the archive root, owned by 0:0, mode
// 0644, dated by the manifest's created time.
func PackBundle(b *Bundle, w io.Writer) error {
	names := append([]string{ManifestFile}, slices.Sorted(maps.Keys(b.Manifest.Files))...)
	mtime := b.Manifest.Created.UTC().Truncate(time.Second)
	tw := tar.NewWriter(w)
	for _, n := range names {
		var data []byte
		var err error
		if n == ManifestFile {
			data, err = readFileLimit(filepath.Join(b.Dir, n), maxManifestSize)
			if sum := sha256.Sum256(data); err == nil && hex.EncodeToString(sum[:]) != b.ManifestSHA256 {
				err = fmt.Errorf("%w: %s changed since the bundle was opened", ErrHashMismatch, ManifestFile)
			}
		} else {
			data, err = b.ReadFile(n)
		}
		if err != nil {
			return fmt.Errorf("pack %s: %w", n, err)
		}
		hdr := &tar.Header{Typeflag: tar.TypeReg, Name: n, Mode: 0o644, Size: int64(len(data)), ModTime: mtime, Format: tar.FormatPAX}
		if err := tw.WriteHeader(hdr); err != nil {
			return fmt.Errorf("pack %s: %w", n, err)
		}
		if _, err := tw.Write(data); err != nil {
			return fmt.Errorf("pack %s: %w", n, err)
		}
	}
	if err := tw.Close(); err != nil {
		return fmt.Errorf("pack: %w", err)
	}
	return nil
}
