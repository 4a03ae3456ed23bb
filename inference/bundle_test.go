package inference

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"crypto/ed25519"
	"crypto/sha256"
	"encoding/json"
	"errors"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// testKey returns a deterministic key pair; seed byte b tells keys apart.
func testKey(b byte) (ed25519.PublicKey, ed25519.PrivateKey) {
	priv := ed25519.NewKeyFromSeed(bytes.Repeat([]byte{b}, ed25519.SeedSize))
	return priv.Public().(ed25519.PublicKey), priv
}

const (
	testIn     = 4
	testHidden = 3
)

// testHeadBytes is a small head (4 -> 3 -> 2) in safetensors form.
func testHeadBytes(t testing.TB, in, hidden, classes int) []byte {
	t.Helper()
	seq := func(n int, scale float32) []float32 {
		v := make([]float32, n)
		for i := range v {
			v[i] = scale * float32((i*7)%5-2)
		}
		return v
	}
	data, err := EncodeSafetensors(map[string]Tensor{
		HeadFC1Weight: F32Tensor([]int{hidden, in}, seq(hidden*in, 0.25)),
		HeadFC1Bias:   F32Tensor([]int{hidden}, seq(hidden, 0.1)),
		HeadFC2Weight: F32Tensor([]int{classes, hidden}, seq(classes*hidden, 0.5)),
		HeadFC2Bias:   F32Tensor([]int{classes}, seq(classes, 0.05)),
	}, map[string]string{"format": "pt"})
	if err != nil {
		t.Fatal(err)
	}
	return data
}

func testManifest() *Manifest {
	head := HeadFile
	return &Manifest{
		Name:         "test-bundle",
		Version:      "2026.11.28-1",
		Created:      time.Date(2026, 11, 28, 12, 0, 0, 0, time.UTC),
		Architecture: "mobilenetv3-small",
		Classes:      []string{"uninfected", "parasitized"},
		Input: InputSpec{
			Name: "image", Width: 128, Height: 128, Layout: "NCHW", Color: "RGB",
			Scale: 1.0 / 255, Mean: [3]float64{0.485, 0.456, 0.406}, Std: [3]float64{0.229, 0.224, 0.225},
		},
		Outputs:   OutputSpec{Features: "features", FeaturesDim: testIn},
		Head:      &head,
		Threshold: 0.5,
		Baseline:  "baseline.json",
	}
}

// writeTestBundle writes an unsealed bundle (manifest without files) into a
// new directory and returns it.
func writeTestBundle(t testing.TB, m *Manifest) string {
	t.Helper()
	dir := t.TempDir()
	files := map[string][]byte{
		BackboneFile:    []byte("not really onnx: bundle verification does not parse it\x00\x01\x02"),
		HeadFile:        testHeadBytes(t, testIn, testHidden, 2),
		"baseline.json": []byte(`{"scores":[0.1,0.9]}`),
		"MODEL_CARD.md": []byte("# test model\n"),
	}
	for n, b := range files {
		if err := os.WriteFile(filepath.Join(dir, n), b, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	writeManifest(t, dir, m)
	return dir
}

func writeManifest(t testing.TB, dir string, m *Manifest) {
	t.Helper()
	raw, err := MarshalManifest(m)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, ManifestFile), raw, 0o644); err != nil {
		t.Fatal(err)
	}
}

// sealedTestBundle returns a bundle directory sealed with testKey(1).
func sealedTestBundle(t testing.TB) string {
	t.Helper()
	dir := writeTestBundle(t, testManifest())
	_, priv := testKey(1)
	if _, err := SealBundle(dir, priv); err != nil {
		t.Fatalf("seal: %v", err)
	}
	return dir
}

func readManifestFile(t *testing.T, dir string) *Manifest {
	t.Helper()
	raw, err := os.ReadFile(filepath.Join(dir, ManifestFile))
	if err != nil {
		t.Fatal(err)
	}
	m, err := ParseManifest(raw)
	if err != nil {
		t.Fatal(err)
	}
	return m
}

// editManifestText rewrites manifest.json through a generic JSON map, the
// way a hand edit would, leaving the signature as it was.
func editManifestText(t *testing.T, dir string, edit func(map[string]any)) {
	t.Helper()
	p := filepath.Join(dir, ManifestFile)
	raw, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	var v map[string]any
	if err := json.Unmarshal(raw, &v); err != nil {
		t.Fatal(err)
	}
	edit(v)
	out, err := json.MarshalIndent(v, "", "  ")
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(p, out, 0o644); err != nil {
		t.Fatal(err)
	}
}

func replaceInManifest(t *testing.T, dir, old, new string) {
	t.Helper()
	p := filepath.Join(dir, ManifestFile)
	raw, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Contains(raw, []byte(old)) {
		t.Fatalf("manifest does not contain %q:\n%s", old, raw)
	}
	if err := os.WriteFile(p, bytes.Replace(raw, []byte(old), []byte(new), 1), 0o644); err != nil {
		t.Fatal(err)
	}
}

// resign re-signs the manifest after a structural edit with key b, without
// recomputing files, so that the content check (not the signature) fails.
func resign(t *testing.T, dir string, b byte, edit func(*Manifest)) {
	t.Helper()
	m := readManifestFile(t, dir)
	edit(m)
	_, priv := testKey(b)
	if err := Sign(m, priv); err != nil {
		t.Fatal(err)
	}
	writeManifest(t, dir, m)
}

func writeFile(t *testing.T, p string, data []byte) {
	t.Helper()
	if err := os.WriteFile(p, data, 0o644); err != nil {
		t.Fatal(err)
	}
}

func trusted() BundleOptions {
	pub, _ := testKey(1)
	return BundleOptions{TrustedKeys: []ed25519.PublicKey{pub}}
}

func TestOpenBundleValid(t *testing.T) {
	dir := sealedTestBundle(t)
	b, err := OpenBundle(dir, trusted())
	if err != nil {
		t.Fatalf("OpenBundle: %v", err)
	}
	defer b.Close()
	pub, _ := testKey(1)
	if !bytes.Equal(b.Signer, pub) {
		t.Errorf("Signer = %x, want %x", b.Signer, pub)
	}
	if b.Head == nil || b.Head.InputDim() != testIn || b.Head.Hidden() != testHidden || b.Head.Classes() != 2 {
		t.Fatalf("head = %+v, want %d->%d->2", b.Head, testIn, testHidden)
	}
	if b.PositiveIndex != 1 {
		t.Errorf("PositiveIndex = %d, want 1", b.PositiveIndex)
	}
	if b.BackbonePath != filepath.Join(dir, BackboneFile) || b.BaselinePath != filepath.Join(dir, "baseline.json") || b.HeadPath != filepath.Join(dir, HeadFile) {
		t.Errorf("paths: %q %q %q", b.BackbonePath, b.BaselinePath, b.HeadPath)
	}
	if b.Version() != "2026.11.28-1" {
		t.Errorf("Version = %q", b.Version())
	}
	// The seal lists every file, including the model card.
	want := []string{"MODEL_CARD.md", BackboneFile, "baseline.json", HeadFile}
	if len(b.Manifest.Files) != len(want) {
		t.Errorf("files = %v, want %v", b.Manifest.Files, want)
	}
	for _, n := range want {
		data, err := os.ReadFile(filepath.Join(dir, n))
		if err != nil {
			t.Fatal(err)
		}
		if sum := sha256.Sum256(data); b.Manifest.Files[n] != hexString(sum[:]) {
			t.Errorf("files[%s] = %s, want %x", n, b.Manifest.Files[n], sum)
		}
	}
	onnx, err := b.ReadFile(BackboneFile)
	if err != nil || !bytes.HasPrefix(onnx, []byte("not really onnx")) {
		t.Errorf("ReadFile(backbone) = %q, %v", onnx, err)
	}
	// A file swapped after opening is caught by ReadFile.
	writeFile(t, b.BackbonePath, []byte("swapped"))
	if _, err := b.ReadFile(BackboneFile); !errors.Is(err, ErrHashMismatch) {
		t.Errorf("ReadFile after swap: %v, want ErrHashMismatch", err)
	}
}

func hexString(b []byte) string {
	const digits = "0123456789abcdef"
	out := make([]byte, 2*len(b))
	for i, x := range b {
		out[2*i], out[2*i+1] = digits[x>>4], digits[x&15]
	}
	return string(out)
}

func TestOpenBundleCorruption(t *testing.T) {
	pub1, _ := testKey(1)
	cases := []struct {
		name    string
		corrupt func(t *testing.T, dir string)
		opts    *BundleOptions
		want    error
		mention []string // substrings the message must hold (file, field)
	}{
		{
			name:    "missing manifest",
			corrupt: func(t *testing.T, dir string) { os.Remove(filepath.Join(dir, ManifestFile)) },
			want:    ErrMissingFile, mention: []string{"manifest.json"},
		},
		{
			name: "bad JSON",
			corrupt: func(t *testing.T, dir string) {
				writeFile(t, filepath.Join(dir, ManifestFile), []byte(`{"name": "x",`))
			},
			want: ErrManifest, mention: []string{"manifest.json"},
		},
		{
			name:    "manifest is an array",
			corrupt: func(t *testing.T, dir string) { writeFile(t, filepath.Join(dir, ManifestFile), []byte(`[1,2]`)) },
			want:    ErrManifest, mention: []string{"manifest.json"},
		},
		{
			name:    "trailing data",
			corrupt: func(t *testing.T, dir string) { replaceInManifest(t, dir, "\n}\n", "\n} {}\n") },
			want:    ErrManifest, mention: []string{"manifest.json"},
		},
		{
			name: "unknown top-level key",
			corrupt: func(t *testing.T, dir string) {
				editManifestText(t, dir, func(v map[string]any) { v["treshold"] = 0.4 })
			},
			want: ErrManifest, mention: []string{"treshold"},
		},
		{
			name: "unknown nested key",
			corrupt: func(t *testing.T, dir string) {
				editManifestText(t, dir, func(v map[string]any) { v["input"].(map[string]any)["resize"] = "bilinear" })
			},
			want: ErrManifest, mention: []string{"resize"},
		},
		{
			name: "duplicate key",
			corrupt: func(t *testing.T, dir string) {
				replaceInManifest(t, dir, `"threshold": 0.5`, `"threshold": 0.5, "threshold": 0.1`)
			},
			want: ErrManifest, mention: []string{"duplicate", "threshold"},
		},
		{
			name:    "misspelt key",
			corrupt: func(t *testing.T, dir string) { replaceInManifest(t, dir, `"threshold": 0.5`, `"treshold": 0.5`) },
			want:    ErrManifest, mention: []string{`unknown field "treshold"`},
		},
		{
			name: "missing field",
			corrupt: func(t *testing.T, dir string) {
				editManifestText(t, dir, func(v map[string]any) { delete(v, "threshold") })
			},
			want: ErrManifest, mention: []string{`"threshold" is required`},
		},
		{
			name:    "missing head key",
			corrupt: func(t *testing.T, dir string) { editManifestText(t, dir, func(v map[string]any) { delete(v, "head") }) },
			want:    ErrManifest, mention: []string{`"head" is required`},
		},
		{
			name: "missing nested field",
			corrupt: func(t *testing.T, dir string) {
				editManifestText(t, dir, func(v map[string]any) { delete(v["input"].(map[string]any), "layout") })
			},
			want: ErrManifest, mention: []string{`"input.layout" is required`},
		},
		{
			name:    "no parasitized class",
			corrupt: func(t *testing.T, dir string) { replaceInManifest(t, dir, `"parasitized"`, `"infected"`) },
			want:    ErrManifest, mention: []string{`"classes"`, "parasitized"},
		},
		{
			name:    "duplicate class",
			corrupt: func(t *testing.T, dir string) { replaceInManifest(t, dir, `"uninfected"`, `"parasitized"`) },
			want:    ErrManifest, mention: []string{`"classes[1]"`},
		},
		{
			name:    "bad layout",
			corrupt: func(t *testing.T, dir string) { replaceInManifest(t, dir, `"NCHW"`, `"CHW"`) },
			want:    ErrManifest, mention: []string{`"input.layout"`, "CHW"},
		},
		{
			name:    "bad color",
			corrupt: func(t *testing.T, dir string) { replaceInManifest(t, dir, `"RGB"`, `"rgb"`) },
			want:    ErrManifest, mention: []string{`"input.color"`},
		},
		{
			name:    "zero width",
			corrupt: func(t *testing.T, dir string) { replaceInManifest(t, dir, `"width": 128`, `"width": 0`) },
			want:    ErrManifest, mention: []string{`"input.width"`},
		},
		{
			name:    "huge height",
			corrupt: func(t *testing.T, dir string) { replaceInManifest(t, dir, `"height": 128`, `"height": 100000`) },
			want:    ErrManifest, mention: []string{`"input.height"`},
		},
		{
			name:    "zero std",
			corrupt: func(t *testing.T, dir string) { replaceInManifest(t, dir, `0.224`, `0`) },
			want:    ErrManifest, mention: []string{`"input.std[1]"`},
		},
		{
			name: "mean with four channels",
			corrupt: func(t *testing.T, dir string) {
				editManifestText(t, dir, func(v map[string]any) { v["input"].(map[string]any)["mean"] = []float64{0.1, 0.2, 0.3, 0.4} })
			},
			want: ErrManifest, mention: []string{`"input.mean"`, "3 numbers"},
		},
		{
			name: "std with two channels",
			corrupt: func(t *testing.T, dir string) {
				editManifestText(t, dir, func(v map[string]any) { v["input"].(map[string]any)["std"] = []float64{0.2, 0.2} })
			},
			want: ErrManifest, mention: []string{`"input.std"`},
		},
		{
			name:    "threshold 1",
			corrupt: func(t *testing.T, dir string) { replaceInManifest(t, dir, `"threshold": 0.5`, `"threshold": 1`) },
			want:    ErrManifest, mention: []string{`"threshold"`},
		},
		{
			name:    "version with slash",
			corrupt: func(t *testing.T, dir string) { replaceInManifest(t, dir, `"2026.11.28-1"`, `"2026/11"`) },
			want:    ErrManifest, mention: []string{`"version"`},
		},
		{
			name:    "bad created",
			corrupt: func(t *testing.T, dir string) { replaceInManifest(t, dir, `"2026-11-28T12:00:00Z"`, `"yesterday"`) },
			want:    ErrManifest, mention: []string{"manifest.json"},
		},
		{
			name: "head not listed",
			corrupt: func(t *testing.T, dir string) {
				replaceInManifest(t, dir, `"head": "head.safetensors"`, `"head": "head2.safetensors"`)
			},
			want: ErrManifest, mention: []string{`"head"`, "head2.safetensors"},
		},
		{
			name: "null head without probabilities output",
			corrupt: func(t *testing.T, dir string) {
				replaceInManifest(t, dir, `"head": "head.safetensors"`, `"head": null`)
			},
			want: ErrManifest, mention: []string{`"head"`, "outputs.probabilities"},
		},
		{
			name: "baseline not listed",
			corrupt: func(t *testing.T, dir string) {
				replaceInManifest(t, dir, `"baseline": "baseline.json"`, `"baseline": "base.json"`)
			},
			want: ErrManifest, mention: []string{`"baseline"`},
		},
		{
			name:    "file name with a folder",
			corrupt: func(t *testing.T, dir string) { replaceInManifest(t, dir, `"MODEL_CARD.md":`, `"../MODEL_CARD.md":`) },
			want:    ErrManifest, mention: []string{"../MODEL_CARD.md"},
		},
		{
			name: "malformed hash",
			corrupt: func(t *testing.T, dir string) {
				resign(t, dir, 1, func(m *Manifest) { m.Files["MODEL_CARD.md"] = "abc" })
			},
			want: ErrManifest, mention: []string{"files.MODEL_CARD.md", "sha256"},
		},
		{
			name: "wrong hash",
			corrupt: func(t *testing.T, dir string) {
				writeFile(t, filepath.Join(dir, BackboneFile), []byte("a different model"))
			},
			want: ErrHashMismatch, mention: []string{BackboneFile},
		},
		{
			name:    "missing file",
			corrupt: func(t *testing.T, dir string) { os.Remove(filepath.Join(dir, "baseline.json")) },
			want:    ErrMissingFile, mention: []string{"baseline.json"},
		},
		{
			name: "listed file absent",
			corrupt: func(t *testing.T, dir string) {
				resign(t, dir, 1, func(m *Manifest) { m.Files["calibration.bin"] = strings.Repeat("ab", 32) })
			},
			want: ErrMissingFile, mention: []string{"calibration.bin"},
		},
		{
			name: "listed file is a folder",
			corrupt: func(t *testing.T, dir string) {
				os.Remove(filepath.Join(dir, "baseline.json"))
				os.Mkdir(filepath.Join(dir, "baseline.json"), 0o755)
			},
			want: ErrMissingFile, mention: []string{"baseline.json"},
		},
		{
			name: "listed file is a symlink",
			corrupt: func(t *testing.T, dir string) {
				target := filepath.Join(t.TempDir(), "card")
				writeFile(t, target, []byte("# test model\n"))
				os.Remove(filepath.Join(dir, "MODEL_CARD.md"))
				if err := os.Symlink(target, filepath.Join(dir, "MODEL_CARD.md")); err != nil {
					t.Fatal(err)
				}
			},
			want: ErrMissingFile, mention: []string{"MODEL_CARD.md", "not a regular file"},
		},
		{
			name:    "unlisted file",
			corrupt: func(t *testing.T, dir string) { writeFile(t, filepath.Join(dir, "backbone-v2.onnx"), []byte("x")) },
			want:    ErrUnlistedFile, mention: []string{"backbone-v2.onnx"},
		},
		{
			name: "bad signature",
			corrupt: func(t *testing.T, dir string) {
				m := readManifestFile(t, dir)
				sig := []byte(m.Signature)
				if sig[10] == 'A' {
					sig[10] = 'B'
				} else {
					sig[10] = 'A'
				}
				replaceInManifest(t, dir, m.Signature, string(sig))
			},
			want: ErrSignature, mention: []string{"signature"},
		},
		{
			name: "signature not base64",
			corrupt: func(t *testing.T, dir string) {
				m := readManifestFile(t, dir)
				replaceInManifest(t, dir, m.Signature, "!!"+m.Signature[2:])
			},
			want: ErrManifest, mention: []string{`"signature"`},
		},
		{
			name:    "signed by untrusted key",
			corrupt: func(t *testing.T, dir string) { resign(t, dir, 2, func(*Manifest) {}) },
			want:    ErrUntrusted, mention: []string{FormatPublicKey(mustPub(2))},
		},
		{
			name:    "tampered field after signing",
			corrupt: func(t *testing.T, dir string) { replaceInManifest(t, dir, `"threshold": 0.5`, `"threshold": 0.05`) },
			want:    ErrSignature, mention: []string{"changed after signing"},
		},
		{
			name: "tampered file list after signing",
			corrupt: func(t *testing.T, dir string) {
				editManifestText(t, dir, func(v map[string]any) { delete(v["files"].(map[string]any), "MODEL_CARD.md") })
			},
			want: ErrSignature,
		},
		{
			name: "signer swapped for a trusted key",
			corrupt: func(t *testing.T, dir string) {
				// Signed by key 2 but claiming trusted key 1: the claim is
				// part of the signed content, so this cannot verify.
				resign(t, dir, 2, func(*Manifest) {})
				m := readManifestFile(t, dir)
				replaceInManifest(t, dir, m.Signer, FormatPublicKey(pub1))
			},
			want: ErrSignature,
		},
		{
			name: "signature removed",
			corrupt: func(t *testing.T, dir string) {
				editManifestText(t, dir, func(v map[string]any) { delete(v, "signature"); delete(v, "signer") })
			},
			want: ErrUnsigned, mention: []string{"seal"},
		},
		{
			name:    "signed but no trusted keys",
			corrupt: func(*testing.T, string) {},
			opts:    &BundleOptions{},
			want:    ErrNoTrustedKeys,
		},
		{
			name:    "unsigned allowed still checks an existing signature",
			corrupt: func(t *testing.T, dir string) { replaceInManifest(t, dir, `"threshold": 0.5`, `"threshold": 0.05`) },
			opts:    &BundleOptions{AllowUnsigned: true},
			want:    ErrSignature,
		},
		{
			name:    "unsigned allowed still refuses an untrusted signer",
			corrupt: func(t *testing.T, dir string) { resign(t, dir, 2, func(*Manifest) {}) },
			opts:    &BundleOptions{AllowUnsigned: true, TrustedKeys: []ed25519.PublicKey{pub1}},
			want:    ErrUntrusted,
		},
		{
			name: "head dims disagree with features_dim",
			corrupt: func(t *testing.T, dir string) {
				resign(t, dir, 1, func(m *Manifest) { m.Outputs.FeaturesDim = 576 })
			},
			want: ErrHead, mention: []string{HeadFile, "fc1.weight", "576"},
		},
		{
			name: "head with three classes for two",
			corrupt: func(t *testing.T, dir string) {
				writeFile(t, filepath.Join(dir, HeadFile), testHeadBytes(t, testIn, testHidden, 3))
				resealFiles(t, dir)
			},
			want: ErrHead, mention: []string{"fc2.weight"},
		},
		{
			name: "head is not safetensors",
			corrupt: func(t *testing.T, dir string) {
				writeFile(t, filepath.Join(dir, HeadFile), []byte("PK\x03\x04 a torch zip, not safetensors"))
				resealFiles(t, dir)
			},
			want: ErrSafetensors, mention: []string{HeadFile},
		},
		{
			name:    "file over the size limit",
			corrupt: func(*testing.T, string) {},
			opts:    &BundleOptions{TrustedKeys: []ed25519.PublicKey{pub1}, MaxFileSize: 16},
			want:    ErrMissingFile, mention: []string{"more than the 16 allowed"},
		},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			dir := sealedTestBundle(t)
			tc.corrupt(t, dir)
			opts := trusted()
			if tc.opts != nil {
				opts = *tc.opts
			}
			b, err := OpenBundle(dir, opts)
			if err == nil {
				b.Close()
				t.Fatalf("OpenBundle succeeded, want %v", tc.want)
			}
			if !errors.Is(err, tc.want) {
				t.Fatalf("error %q\ndoes not wrap %q", err, tc.want)
			}
			for _, s := range append(tc.mention, dir) {
				if !strings.Contains(err.Error(), s) {
					t.Errorf("error %q does not mention %q", err, s)
				}
			}
		})
	}
}

func mustPub(b byte) ed25519.PublicKey {
	pub, _ := testKey(b)
	return pub
}

// resealFiles re-seals with the trusted key, so only the content is wrong.
func resealFiles(t *testing.T, dir string) {
	t.Helper()
	_, priv := testKey(1)
	if _, err := SealBundle(dir, priv); err != nil {
		t.Fatal(err)
	}
}

func TestOpenBundleUnsignedForDevelopment(t *testing.T) {
	dir := writeTestBundle(t, testManifest())
	// Without files an unsealed manifest is invalid, so list them unsigned.
	m := readManifestForSeal(t, dir)
	writeManifest(t, dir, m)
	if _, err := OpenBundle(dir, trusted()); !errors.Is(err, ErrUnsigned) {
		t.Fatalf("unsigned bundle with keys: %v, want ErrUnsigned", err)
	}
	b, err := OpenBundle(dir, BundleOptions{AllowUnsigned: true})
	if err != nil {
		t.Fatalf("AllowUnsigned: %v", err)
	}
	if b.Signer != nil {
		t.Errorf("Signer = %x for an unsigned bundle", b.Signer)
	}

	// A signed bundle with no keys configured opens under AllowUnsigned,
	// without a trusted signer.
	sealed := sealedTestBundle(t)
	b, err = OpenBundle(sealed, BundleOptions{AllowUnsigned: true})
	if err != nil {
		t.Fatalf("signed, AllowUnsigned, no keys: %v", err)
	}
	if b.Signer != nil {
		t.Errorf("Signer = %x, want nil when no key is trusted", b.Signer)
	}
}

// readManifestForSeal fills files the way seal does, without signing.
func readManifestForSeal(t *testing.T, dir string) *Manifest {
	t.Helper()
	_, priv := testKey(9)
	m, err := SealBundle(dir, priv)
	if err != nil {
		t.Fatal(err)
	}
	m.Signer, m.Signature = "", ""
	return m
}

func TestSealIsDeterministicAndIdempotent(t *testing.T) {
	dir := sealedTestBundle(t)
	first, err := os.ReadFile(filepath.Join(dir, ManifestFile))
	if err != nil {
		t.Fatal(err)
	}
	resealFiles(t, dir)
	second, err := os.ReadFile(filepath.Join(dir, ManifestFile))
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(first, second) {
		t.Errorf("sealing twice changed manifest.json:\n%s\n---\n%s", first, second)
	}
	if !bytes.HasPrefix(first, []byte("{\n  \"name\": ")) || !bytes.HasSuffix(first, []byte("}\n")) {
		t.Errorf("manifest is not pretty-printed:\n%s", first)
	}
	// Re-indenting the manifest keeps the signature valid: it covers the
	// canonical form, not the bytes.
	var v any
	if err := json.Unmarshal(first, &v); err != nil {
		t.Fatal(err)
	}
	compact, _ := json.Marshal(v)
	writeFile(t, filepath.Join(dir, ManifestFile), compact)
	if _, err := OpenBundle(dir, trusted()); err != nil {
		t.Errorf("re-indented manifest: %v", err)
	}
}

func TestSealRefusesFolders(t *testing.T) {
	dir := writeTestBundle(t, testManifest())
	os.Mkdir(filepath.Join(dir, "extra"), 0o755)
	_, priv := testKey(1)
	if _, err := SealBundle(dir, priv); err == nil || !strings.Contains(err.Error(), "extra") {
		t.Fatalf("seal with a folder: %v", err)
	}
}

func TestSealValidatesManifest(t *testing.T) {
	m := testManifest()
	m.Threshold = 2
	dir := writeTestBundle(t, m)
	_, priv := testKey(1)
	_, err := SealBundle(dir, priv)
	if !errors.Is(err, ErrManifest) || !strings.Contains(err.Error(), `"threshold"`) {
		t.Fatalf("seal of an invalid manifest: %v", err)
	}
}

type tarMember struct {
	name string
	typ  byte
	body []byte
	link string
}

func writeTar(t *testing.T, p string, members []tarMember, gz bool) {
	t.Helper()
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	for _, m := range members {
		typ := m.typ
		if typ == 0 {
			typ = tar.TypeReg
		}
		hdr := &tar.Header{Name: m.name, Typeflag: typ, Mode: 0o644, Size: int64(len(m.body)), Linkname: m.link}
		if typ != tar.TypeReg {
			hdr.Size = 0
		}
		if err := tw.WriteHeader(hdr); err != nil {
			t.Fatal(err)
		}
		if typ == tar.TypeReg {
			tw.Write(m.body)
		}
	}
	if err := tw.Close(); err != nil {
		t.Fatal(err)
	}
	data := buf.Bytes()
	if gz {
		var z bytes.Buffer
		zw := gzip.NewWriter(&z)
		zw.Write(data)
		zw.Close()
		data = z.Bytes()
	}
	writeFile(t, p, data)
}

// bundleMembers returns the sealed test bundle's files as tar members under
// prefix.
func bundleMembers(t *testing.T, prefix string) []tarMember {
	dir := sealedTestBundle(t)
	entries, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	var ms []tarMember
	for _, e := range entries {
		data, err := os.ReadFile(filepath.Join(dir, e.Name()))
		if err != nil {
			t.Fatal(err)
		}
		ms = append(ms, tarMember{name: prefix + e.Name(), body: data})
	}
	return ms
}

func TestOpenBundleArchive(t *testing.T) {
	cases := []struct {
		name    string
		members func(t *testing.T) []tarMember
		gz      bool
		opts    func(o *BundleOptions)
		want    error
		mention string
	}{
		{name: "root", members: func(t *testing.T) []tarMember { return bundleMembers(t, "") }},
		{name: "dot slash", members: func(t *testing.T) []tarMember {
			return append([]tarMember{{name: "./", typ: tar.TypeDir}}, bundleMembers(t, "./")...)
		}},
		{name: "one folder", members: func(t *testing.T) []tarMember {
			return append([]tarMember{{name: "default/", typ: tar.TypeDir}}, bundleMembers(t, "default/")...)
		}},
		{name: "gzip", gz: true, members: func(t *testing.T) []tarMember { return bundleMembers(t, "") }},
		{
			name: "path traversal", want: ErrArchive, mention: "../../evil.sh",
			members: func(t *testing.T) []tarMember {
				return append(bundleMembers(t, ""), tarMember{name: "../../evil.sh", body: []byte("#!/bin/sh\n")})
			},
		},
		{
			name: "absolute path", want: ErrArchive, mention: "/tmp/evil",
			members: func(t *testing.T) []tarMember {
				return append(bundleMembers(t, ""), tarMember{name: "/tmp/evil", body: []byte("x")})
			},
		},
		{
			name: "traversal inside the name", want: ErrArchive, mention: "default/../../x",
			members: func(t *testing.T) []tarMember {
				return append(bundleMembers(t, "default/"), tarMember{name: "default/../../x", body: []byte("x")})
			},
		},
		{
			name: "symlink member", want: ErrArchive, mention: "baseline.json",
			members: func(t *testing.T) []tarMember {
				ms := bundleMembers(t, "")
				for i := range ms {
					if ms[i].name == "baseline.json" {
						ms[i] = tarMember{name: "baseline.json", typ: tar.TypeSymlink, link: "/etc/passwd"}
					}
				}
				return ms
			},
		},
		{
			name: "hard link member", want: ErrArchive, mention: "link",
			members: func(t *testing.T) []tarMember {
				return append(bundleMembers(t, ""), tarMember{name: "link", typ: tar.TypeLink, link: "/etc/shadow"})
			},
		},
		{
			name: "nested folder", want: ErrArchive, mention: "a/b/",
			members: func(t *testing.T) []tarMember { return bundleMembers(t, "a/b/") },
		},
		{
			name: "two folders", want: ErrArchive, mention: "b/",
			members: func(t *testing.T) []tarMember {
				return append(bundleMembers(t, "a/"), tarMember{name: "b/x", body: []byte("x")})
			},
		},
		{
			name: "duplicate member", want: ErrArchive, mention: "appears twice",
			members: func(t *testing.T) []tarMember {
				ms := bundleMembers(t, "")
				return append(ms, ms[0])
			},
		},
		{
			name: "member over the size limit", want: ErrArchive, mention: "more than the 64 allowed",
			members: func(t *testing.T) []tarMember { return bundleMembers(t, "") },
			opts:    func(o *BundleOptions) { o.MaxFileSize = 64 },
		},
		{
			name: "members over the total limit", want: ErrArchive, mention: "total",
			members: func(t *testing.T) []tarMember { return bundleMembers(t, "") },
			opts:    func(o *BundleOptions) { o.MaxTotalSize = 600 },
		},
		{
			name: "no manifest", want: ErrMissingFile, mention: "manifest.json",
			members: func(t *testing.T) []tarMember {
				var out []tarMember
				for _, m := range bundleMembers(t, "") {
					if m.name != ManifestFile {
						out = append(out, m)
					}
				}
				return out
			},
		},
		{
			name: "tampered member", want: ErrHashMismatch, mention: BackboneFile,
			members: func(t *testing.T) []tarMember {
				ms := bundleMembers(t, "")
				for i := range ms {
					if ms[i].name == BackboneFile {
						ms[i].body = []byte("evil model")
					}
				}
				return ms
			},
		},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			work := t.TempDir()
			tmp := filepath.Join(work, "tmp")
			os.Mkdir(tmp, 0o755)
			p := filepath.Join(work, "bundle.tar")
			writeTar(t, p, tc.members(t), tc.gz)
			opts := trusted()
			opts.TempDir = tmp
			if tc.opts != nil {
				tc.opts(&opts)
			}
			b, err := OpenBundle(p, opts)
			if tc.want == nil {
				if err != nil {
					t.Fatalf("OpenBundle: %v", err)
				}
				if b.Head == nil || filepath.Dir(b.BackbonePath) != b.Dir || !strings.HasPrefix(b.Dir, tmp) {
					t.Errorf("bundle %+v not extracted under %s", b, tmp)
				}
				if err := b.Close(); err != nil {
					t.Fatal(err)
				}
			} else {
				if err == nil {
					b.Close()
					t.Fatalf("OpenBundle succeeded, want %v", tc.want)
				}
				if !errors.Is(err, tc.want) || !strings.Contains(err.Error(), tc.mention) {
					t.Fatalf("error %q, want %v mentioning %q", err, tc.want, tc.mention)
				}
			}
			// Nothing is left behind, and nothing escaped the temp folder.
			if left, _ := os.ReadDir(tmp); len(left) != 0 {
				t.Errorf("left in temp dir: %v", left)
			}
			if all, _ := os.ReadDir(work); len(all) != 2 {
				t.Errorf("files written beside the archive: %v", all)
			}
		})
	}
}

func TestOpenBundleNotAnArchive(t *testing.T) {
	p := filepath.Join(t.TempDir(), "bundle.tar")
	writeFile(t, p, bytes.Repeat([]byte("garbage "), 200))
	if _, err := OpenBundle(p, trusted()); !errors.Is(err, ErrArchive) {
		t.Fatalf("garbage file: %v, want ErrArchive", err)
	}
	if _, err := OpenBundle(filepath.Join(t.TempDir(), "nope"), trusted()); !errors.Is(err, ErrMissingFile) {
		t.Fatalf("missing path: %v, want ErrMissingFile", err)
	}
}

func TestPackBundleRoundTrip(t *testing.T) {
	dir := sealedTestBundle(t)
	b, err := OpenBundle(dir, trusted())
	if err != nil {
		t.Fatal(err)
	}
	var first, second bytes.Buffer
	if err := PackBundle(b, &first); err != nil {
		t.Fatal(err)
	}
	if err := PackBundle(b, &second); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(first.Bytes(), second.Bytes()) {
		t.Error("PackBundle is not deterministic")
	}
	p := filepath.Join(t.TempDir(), "b.tar")
	writeFile(t, p, first.Bytes())
	tb, err := OpenBundle(p, trusted())
	if err != nil {
		t.Fatalf("open packed bundle: %v", err)
	}
	defer tb.Close()
	if tb.ManifestSHA256 != b.ManifestSHA256 {
		t.Errorf("packed manifest differs")
	}
}

// TestShippedDefaultBundle: the committed default bundle verifies against the
// committed public key, and its head matches what the manifest declares.
func TestShippedDefaultBundle(t *testing.T) {
	dir := filepath.Join("..", "models", "default")
	if _, err := os.Stat(filepath.Join(dir, ManifestFile)); errors.Is(err, os.ErrNotExist) {
		t.Skip("models/default has no manifest yet (made by make -C models/recipe)")
	}
	keys, err := LoadPublicKeys(filepath.Join("..", "models", "keys"))
	if err != nil {
		t.Fatalf("trusted keys for the shipped bundle: %v", err)
	}
	b, err := OpenBundle(dir, BundleOptions{TrustedKeys: keys})
	if err != nil {
		t.Fatalf("shipped bundle: %v", err)
	}
	defer b.Close()
	if b.Signer == nil || b.Head == nil {
		t.Fatalf("shipped bundle: signer %x, head %v", b.Signer, b.Head)
	}
	if b.Head.InputDim() != b.Manifest.Outputs.FeaturesDim || b.Head.Classes() != len(b.Manifest.Classes) {
		t.Errorf("head %d->%d->%d vs manifest features_dim %d, %d classes", b.Head.InputDim(), b.Head.Hidden(), b.Head.Classes(), b.Manifest.Outputs.FeaturesDim, len(b.Manifest.Classes))
	}
	t.Logf("%s %s: head %d->%d->%d, signer %s", b.Manifest.Name, b.Manifest.Version, b.Head.InputDim(), b.Head.Hidden(), b.Head.Classes(), FormatPublicKey(b.Signer))
}

// BenchmarkOpenShippedBundle: the cost of verifying the default bundle
// (hashing ~4 MB, signature, head load), paid at start and on a model swap.
func BenchmarkOpenShippedBundle(b *testing.B) {
	dir := filepath.Join("..", "models", "default")
	keys, err := LoadPublicKeys(filepath.Join("..", "models", "keys"))
	if err != nil {
		b.Skipf("no shipped bundle keys: %v", err)
	}
	b.ReportAllocs()
	for b.Loop() {
		bu, err := OpenBundle(dir, BundleOptions{TrustedKeys: keys})
		if err != nil {
			b.Fatal(err)
		}
		bu.Close()
	}
}

// FuzzBundleArchive feeds arbitrary bytes to the .tar extraction (bundles
// arrive over the network as model offers): it must never panic, never write
// outside its folder, and fail only with the archive sentinels.
func FuzzBundleArchive(f *testing.F) {
	mk := func(members []tarMember, gz bool) []byte {
		var buf bytes.Buffer
		tw := tar.NewWriter(&buf)
		for _, m := range members {
			typ := m.typ
			if typ == 0 {
				typ = tar.TypeReg
			}
			size := int64(len(m.body))
			if typ != tar.TypeReg {
				size = 0
			}
			tw.WriteHeader(&tar.Header{Name: m.name, Typeflag: typ, Mode: 0o644, Size: size, Linkname: m.link})
			if typ == tar.TypeReg {
				tw.Write(m.body)
			}
		}
		tw.Close()
		if !gz {
			return buf.Bytes()
		}
		var z bytes.Buffer
		zw := gzip.NewWriter(&z)
		zw.Write(buf.Bytes())
		zw.Close()
		return z.Bytes()
	}
	good := []tarMember{{name: ManifestFile, body: []byte(`{}`)}, {name: BackboneFile, body: []byte("onnx")}}
	f.Add(mk(good, false))
	f.Add(mk(good, true))
	f.Add(mk(append([]tarMember{{name: "b/", typ: tar.TypeDir}}, tarMember{name: "b/manifest.json", body: []byte("{}")}), false))
	f.Add(mk([]tarMember{{name: "../x", body: []byte("x")}}, false))
	f.Add(mk([]tarMember{{name: "l", typ: tar.TypeSymlink, link: "/etc"}}, false))
	f.Add([]byte{})
	f.Fuzz(func(t *testing.T, data []byte) {
		work := t.TempDir()
		dir := filepath.Join(work, "x")
		if err := os.Mkdir(dir, 0o700); err != nil {
			t.Fatal(err)
		}
		var r io.Reader = bytes.NewReader(data)
		if zr, err := gzip.NewReader(bytes.NewReader(data)); err == nil {
			r = zr
		}
		err := extractTar(r, dir, 1<<16, 1<<18)
		if err != nil && !errors.Is(err, ErrArchive) && !errors.Is(err, ErrMissingFile) {
			t.Fatalf("unexpected error kind: %v", err)
		}
		if entries, _ := os.ReadDir(work); len(entries) != 1 {
			t.Fatalf("wrote outside the extraction folder: %v", entries)
		}
		entries, _ := os.ReadDir(dir)
		for _, e := range entries {
			if !e.Type().IsRegular() {
				t.Fatalf("extracted a non-regular file %s (%v)", e.Name(), e.Type())
			}
		}
	})
}
