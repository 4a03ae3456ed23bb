package main

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/scopewatch/scopewatch/inference"
)

// runCLI runs scopewatch in-process and returns its exit code and output.
func runCLI(t *testing.T, args ...string) (int, string, string) {
	t.Helper()
	var out, errb bytes.Buffer
	code := run(context.Background(), args, &out, &errb)
	return code, out.String(), errb.String()
}

// TestBundleCommands walks the release path: keygen, seal, verify, pack,
// verify the tar, and the failures an operator meets (tampering, wrong key).
func TestBundleCommands(t *testing.T) {
	dir := t.TempDir()
	b := filepath.Join(dir, "bundle")
	os.Mkdir(b, 0o755)
	head, err := inference.EncodeSafetensors(map[string]inference.Tensor{
		inference.HeadFC1Weight: inference.F32Tensor([]int{3, 2}, []float32{1, 2, 3, 4, 5, 6}),
		inference.HeadFC1Bias:   inference.F32Tensor([]int{3}, []float32{0, 0, 0}),
		inference.HeadFC2Weight: inference.F32Tensor([]int{2, 3}, []float32{1, 0, -1, 0, 1, 1}),
		inference.HeadFC2Bias:   inference.F32Tensor([]int{2}, []float32{0, 0}),
	}, nil)
	if err != nil {
		t.Fatal(err)
	}
	files := map[string]string{
		inference.BackboneFile: "onnx bytes (not loaded: verify runs with --no-onnx)",
		inference.HeadFile:     string(head),
		inference.ManifestFile: `{"name":"t","version":"1.0.0","created":"2026-11-28T00:00:00Z","architecture":"x",
			"classes":["uninfected","parasitized"],
			"input":{"name":"image","width":8,"height":8,"layout":"NHWC","color":"BGR","scale":1,"mean":[0,0,0],"std":[1,1,1]},
			"outputs":{"features":"f","features_dim":2,"probabilities":null},"head":"head.safetensors","threshold":0.5,"files":{}}`,
	}
	for n, s := range files {
		if err := os.WriteFile(filepath.Join(b, n), []byte(s), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	key := filepath.Join(dir, "keys", "release")
	if code, _, errs := runCLI(t, "bundle", "keygen", "--out", key); code != 0 {
		t.Fatalf("keygen: %d %s", code, errs)
	}
	if code, out, errs := runCLI(t, "bundle", "seal", b, "--key", key+".key"); code != 0 || !strings.Contains(out, "sealed") {
		t.Fatalf("seal: %d %s %s", code, out, errs)
	}
	code, out, errs := runCLI(t, "bundle", "verify", "--keys", key+".pub", "--no-onnx", b)
	if code != 0 {
		t.Fatalf("verify: %d %s", code, errs)
	}
	for _, want := range []string{"signature  ok", "files      ok: 2 listed", "Dense(2->3) ReLU"} {
		if !strings.Contains(out, want) {
			t.Errorf("verify output lacks %q:\n%s", want, out)
		}
	}
	tarPath := filepath.Join(dir, "b.tar")
	if code, _, errs := runCLI(t, "bundle", "pack", "--keys", key+".pub", b, tarPath); code != 0 {
		t.Fatalf("pack: %d %s", code, errs)
	}
	if code, _, errs := runCLI(t, "bundle", "verify", "--keys", filepath.Dir(key), "--no-onnx", tarPath); code != 0 {
		t.Fatalf("verify tar with a key folder: %d %s", code, errs)
	}

	if code, _, _ := runCLI(t, "bundle", "keygen", "--out", filepath.Join(dir, "other")); code != 0 {
		t.Fatal("second keygen failed")
	}
	code, _, errs = runCLI(t, "bundle", "verify", "--keys", filepath.Join(dir, "other.pub"), "--no-onnx", b)
	if code != 1 || !strings.Contains(errs, "untrusted key") {
		t.Errorf("verify with another key: %d %s", code, errs)
	}
	m := filepath.Join(b, inference.ManifestFile)
	raw, _ := os.ReadFile(m)
	os.WriteFile(m, bytes.Replace(raw, []byte(`"threshold": 0.5`), []byte(`"threshold": 0.2`), 1), 0o644)
	code, _, errs = runCLI(t, "bundle", "verify", "--keys", key+".pub", "--no-onnx", b)
	if code != 1 || !strings.Contains(errs, "changed after signing") {
		t.Errorf("verify of a tampered manifest: %d %s", code, errs)
	}
	if code, _, _ := runCLI(t, "bundle", "seal", b); code != 2 {
		t.Errorf("seal without --key: exit %d, want 2", code)
	}
}
