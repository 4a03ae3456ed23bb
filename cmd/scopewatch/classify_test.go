package main

import (
	"bytes"
	"context"
	"encoding/binary"
	"encoding/csv"
	"encoding/json"
	"fmt"
	"hash/crc32"
	"image"
	"image/jpeg"
	"image/png"
	"math/rand"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/scopewatch/scopewatch/drift"
	"github.com/scopewatch/scopewatch/inference"
	"github.com/scopewatch/scopewatch/internal/synth"
)

// classifyModel returns a bundle and its key file for the classify tests:
// the shipped default model when present (or SCOPEWATCH_TEST_MODEL with
// SCOPEWATCH_TEST_KEYS), else a small bundle around the inference package's
// test backbone, sealed with a throw-away key.
func classifyModel(t *testing.T) (dir, keys string) {
	t.Helper()
	if env := os.Getenv("SCOPEWATCH_TEST_MODEL"); env != "" {
		return env, os.Getenv("SCOPEWATCH_TEST_KEYS")
	}
	root := repoRoot(t)
	def := filepath.Join(root, "models", "default")
	if _, err := os.Stat(filepath.Join(def, inference.ManifestFile)); err == nil {
		return def, filepath.Join(root, "models", "keys")
	}
	t.Logf("models/default not present; using the tiny test backbone")
	dir = t.TempDir()
	onnx, err := os.ReadFile(filepath.Join(root, "inference", "testdata", "tiny.onnx"))
	if err != nil {
		t.Fatal(err)
	}
	must(t, os.WriteFile(filepath.Join(dir, inference.BackboneFile), onnx, 0o644))
	rng := rand.New(rand.NewSource(3))
	randn := func(n int) []float32 {
		v := make([]float32, n)
		for i := range v {
			v[i] = float32(rng.NormFloat64())
		}
		return v
	}
	st, err := inference.EncodeSafetensors(map[string]inference.Tensor{
		inference.HeadFC1Weight: inference.F32Tensor([]int{8, 16}, randn(128)),
		inference.HeadFC1Bias:   inference.F32Tensor([]int{8}, randn(8)),
		inference.HeadFC2Weight: inference.F32Tensor([]int{2, 8}, randn(16)),
		inference.HeadFC2Bias:   inference.F32Tensor([]int{2}, randn(2)),
	}, nil)
	must(t, err)
	must(t, os.WriteFile(filepath.Join(dir, "head.safetensors"), st, 0o644))
	head := "head.safetensors"
	m := &inference.Manifest{
		Name: "tiny", Version: "2026.11.28-0", Created: time.Date(2026, 11, 28, 0, 0, 0, 0, time.UTC),
		Architecture: "test", Classes: []string{"uninfected", "parasitized"},
		Input: inference.InputSpec{Name: "image", Width: 128, Height: 128, Layout: "NCHW", Color: "RGB",
			Scale: 1.0 / 255, Mean: [3]float64{0.485, 0.456, 0.406}, Std: [3]float64{0.229, 0.224, 0.225}},
		Outputs: inference.OutputSpec{Features: "features", FeaturesDim: 16}, Head: &head, Threshold: 0.5,
	}
	raw, err := inference.MarshalManifest(m)
	must(t, err)
	must(t, os.WriteFile(filepath.Join(dir, inference.ManifestFile), raw, 0o644))
	pub, priv, err := inference.GenerateKey(rand.New(rand.NewSource(4)))
	must(t, err)
	_, err = inference.SealBundle(dir, priv)
	must(t, err)
	keys = filepath.Join(t.TempDir(), "test")
	must(t, inference.WriteKeyPair(keys, "test", pub, priv))
	return dir, keys + ".pub"
}

func must(t *testing.T, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}

// pngClaiming is a PNG signature and IHDR claiming w x h pixels followed by
// a tiny IDAT and IEND: a decompression bomb as far as the header goes.
func pngClaiming(w, h uint32) []byte {
	var b bytes.Buffer
	b.WriteString("\x89PNG\r\n\x1a\n")
	chunk := func(typ string, data []byte) {
		binary.Write(&b, binary.BigEndian, uint32(len(data)))
		b.WriteString(typ)
		b.Write(data)
		binary.Write(&b, binary.BigEndian, crc32.ChecksumIEEE(append([]byte(typ), data...)))
	}
	ihdr := make([]byte, 13)
	binary.BigEndian.PutUint32(ihdr, w)
	binary.BigEndian.PutUint32(ihdr[4:], h)
	ihdr[8], ihdr[9] = 8, 2
	chunk("IHDR", ihdr)
	chunk("IDAT", []byte{0x78, 0x9c, 0x03, 0x00, 0x00, 0x00, 0x00, 0x01})
	chunk("IEND", nil)
	return b.Bytes()
}

// TestClassifyBadFiles is the acceptance case for bad inputs: a folder of
// good synthetic crops (with labels.csv) plus zero-byte, truncated PNG and
// JPEG, text-named-.png and 30000x30000-header files. Every good file must
// be classified, every bad one reported with its reason, the summary
// printed, and the exit status 1 only after all of that.
func TestClassifyBadFiles(t *testing.T) {
	model, keys := classifyModel(t)
	dir := t.TempDir()
	var labels strings.Builder
	labels.WriteString("path,label,slide\n")
	const good = 12
	var pngData, jpegData []byte
	for i := range good {
		s := synth.CellAt(424242, synth.Knobs{}, 6, i)
		var buf bytes.Buffer
		name := fmt.Sprintf("%s/%s.png", s.Slide, s.Name)
		if i%3 == 2 {
			must(t, jpeg.Encode(&buf, s.Image, &jpeg.Options{Quality: 90}))
			name = fmt.Sprintf("%s/%s.jpg", s.Slide, s.Name)
			jpegData = buf.Bytes()
		} else {
			must(t, synth.Encode(&buf, s.Image, synth.Knobs{}))
			pngData = buf.Bytes()
		}
		must(t, os.MkdirAll(filepath.Join(dir, s.Slide), 0o755))
		must(t, os.WriteFile(filepath.Join(dir, name), buf.Bytes(), 0o644))
		fmt.Fprintf(&labels, "%s,%s,%s\n", name, s.Label, s.Slide)
	}
	must(t, os.WriteFile(filepath.Join(dir, "labels.csv"), []byte(labels.String()), 0o644))
	must(t, os.WriteFile(filepath.Join(dir, "truth.json"), []byte(`{"not":"an image"}`), 0o644))
	bad := map[string]struct {
		data   []byte
		reason string
	}{
		"empty.png":     {nil, "empty file"},
		"cut.png":       {pngData[:len(pngData)/2], "truncated image"},
		"cut.jpg":       {jpegData[:len(jpegData)*2/3], "truncated image"},
		"notes.png":     {[]byte("microscope log: stage moved\n"), "not an image"},
		"bomb.png":      {pngClaiming(30000, 30000), "image too large"},
		"wrong-ext.txt": {pngData, ""}, // a good image with a wrong extension is still classified
	}
	must(t, os.MkdirAll(filepath.Join(dir, "bad"), 0o755))
	for name, b := range bad {
		must(t, os.WriteFile(filepath.Join(dir, "bad", name), b.data, 0o644))
	}

	for _, format := range []string{"json", "csv"} {
		t.Run(format, func(t *testing.T) {
			var stdout, stderr bytes.Buffer
			code := run(context.Background(), []string{"classify", "--model", model, "--keys", keys, "--format", format, "--batch", "4", dir}, &stdout, &stderr)
			if code != 1 {
				t.Fatalf("exit %d, want 1 (some inputs failed); stderr:\n%s", code, stderr.String())
			}
			recs := parseRecords(t, format, stdout.Bytes())
			if len(recs) != good+len(bad) {
				t.Fatalf("%d records, want %d (json/labels files must be skipped):\n%s", len(recs), good+len(bad), stdout.String())
			}
			for path, r := range recs {
				rel, _ := filepath.Rel(dir, path)
				b, isBad := bad[filepath.Base(rel)]
				if isBad && b.reason != "" {
					if r.Error == "" || !strings.Contains(r.Error, b.reason) {
						t.Errorf("%s: error %q, want one mentioning %q", rel, r.Error, b.reason)
					}
					continue
				}
				if r.Error != "" || (r.Label != "parasitized" && r.Label != "uninfected") || r.P == nil || *r.P < 0 || *r.P > 1 || r.Model == "" {
					t.Errorf("%s: good image got %+v", rel, r)
				}
				// Synthetic crops are textured cells on black: a sharp
				// enough interior for a positive focus.
				if r.Focus == nil || !(*r.Focus > 0) {
					t.Errorf("%s: focus %v, want > 0", rel, r.Focus)
				}
			}
			summary := stderr.String()
			for _, want := range []string{fmt.Sprintf("classified %d of %d images", good+1, good+len(bad)), "5 failed", "against labels.csv (12 images", "AUC"} {
				if !strings.Contains(summary, want) {
					t.Errorf("summary lacks %q:\n%s", want, summary)
				}
			}
		})
	}
}

type classifyRecord struct {
	Path     string   `json:"path"`
	Label    string   `json:"label"`
	P        *float64 `json:"p_parasitized"`
	Focus    *float64 `json:"focus"`
	Model    string   `json:"model"`
	Error    string   `json:"error"`
	Rejected string   `json:"rejected"`
}

func parseRecords(t *testing.T, format string, out []byte) map[string]classifyRecord {
	t.Helper()
	recs := map[string]classifyRecord{}
	if format == "json" {
		for _, line := range strings.Split(strings.TrimSpace(string(out)), "\n") {
			var r classifyRecord
			dec := json.NewDecoder(strings.NewReader(line))
			dec.DisallowUnknownFields()
			if err := dec.Decode(&r); err != nil {
				t.Fatalf("record %q: %v", line, err)
			}
			recs[r.Path] = r
		}
		return recs
	}
	rows, err := csv.NewReader(bytes.NewReader(out)).ReadAll()
	if err != nil {
		t.Fatal(err)
	}
	if strings.Join(rows[0], ",") != "path,label,p_parasitized,model,error,focus,rejected" {
		t.Fatalf("csv header %q", rows[0])
	}
	for _, row := range rows[1:] {
		r := classifyRecord{Path: row[0], Label: row[1], Model: row[3], Error: row[4], Rejected: row[6]}
		if row[2] != "" {
			var p float64
			fmt.Sscan(row[2], &p)
			r.P = &p
		}
		if row[5] != "" {
			var f float64
			fmt.Sscan(row[5], &f)
			r.Focus = &f
		}
		recs[r.Path] = r
	}
	return recs
}

// classify applies the daemon's plausibility gate: a thumbnail and every
// kind of junk get "rejected" with the reason and no class, nominal crops
// are classified, and a refusal does not fail the run.
func TestClassifyRefusesImplausible(t *testing.T) {
	model, keys := classifyModel(t)
	if crop, _, err := drift.LoadBaselinePlausibility(filepath.Join(model, "baseline.json")); err != nil || crop == nil {
		t.Fatalf("%s: the shipped bundle must carry a plausibility reference (err %v)", model, err)
	}
	dir := t.TempDir()
	junk := map[string]bool{}
	write := func(name string, img image.Image) {
		var buf bytes.Buffer
		must(t, png.Encode(&buf, img))
		must(t, os.WriteFile(filepath.Join(dir, name), buf.Bytes(), 0o644))
	}
	for _, kind := range synth.JunkKinds {
		var nom image.Image
		if synth.JunkNeedsNominal(kind) {
			nom = synth.CellAt(424307, synth.Knobs{}, 0, 0).Image
		}
		img, err := synth.Junk(kind, 0, 424307, nom)
		must(t, err)
		write(kind+".png", img)
		junk[kind+".png"] = true
	}
	write("thumb.png", image.NewRGBA(image.Rect(0, 0, 8, 8)))
	junk["thumb.png"] = true
	for i := range 6 {
		write(fmt.Sprintf("cell%d.png", i), synth.CellAt(424309, synth.Knobs{}, 3, i).Image)
	}
	for _, format := range []string{"json", "csv"} {
		t.Run(format, func(t *testing.T) {
			var stdout, stderr bytes.Buffer
			if code := run(context.Background(), []string{"classify", "--model", model, "--keys", keys, "--format", format, dir}, &stdout, &stderr); code != 0 {
				t.Fatalf("exit %d, want 0 (a refusal is not a failure); stderr:\n%s", code, stderr.String())
			}
			for path, r := range parseRecords(t, format, stdout.Bytes()) {
				name := filepath.Base(path)
				if junk[name] {
					if !strings.HasPrefix(r.Rejected, "rejected: ") || r.Label != "" || r.P != nil || r.Error != "" {
						t.Errorf("%s: %+v, want rejected with a reason and no class", name, r)
					}
				} else if r.Rejected != "" || r.Label == "" {
					t.Errorf("%s: nominal crop got %+v", name, r)
				}
			}
			if want := fmt.Sprintf("%d rejected as implausible", len(junk)); !strings.Contains(stderr.String(), want) {
				t.Errorf("summary lacks %q:\n%s", want, stderr.String())
			}
		})
	}
}

func TestClassifyUsage(t *testing.T) {
	for _, args := range [][]string{{"classify"}, {"classify", "--format", "xml", "x"}, {"classify", "--batch", "0", "x"}} {
		var stdout, stderr bytes.Buffer
		if code := run(context.Background(), args, &stdout, &stderr); code != 2 {
			t.Errorf("%q: exit %d, want 2; stderr %s", args, code, stderr.String())
		}
	}
}

func TestRocAUC(t *testing.T) {
	cases := []struct {
		s    []labelledScore
		want float64
	}{
		{[]labelledScore{{0.1, false}, {0.9, true}}, 1},
		{[]labelledScore{{0.9, false}, {0.1, true}}, 0},
		{[]labelledScore{{0.5, false}, {0.5, true}}, 0.5},
		{[]labelledScore{{0.2, false}, {0.4, true}, {0.6, false}, {0.8, true}}, 0.75},
	}
	for _, c := range cases {
		if got, ok := rocAUC(c.s); !ok || got != c.want {
			t.Errorf("rocAUC(%v) = %v, %v; want %v", c.s, got, ok, c.want)
		}
	}
	if _, ok := rocAUC([]labelledScore{{0.3, true}}); ok {
		t.Error("AUC of one class reported")
	}
}

// repoRoot is the module root, where the shipped model and keys are.
func repoRoot(t testing.TB) string {
	p, err := filepath.Abs(filepath.Join("..", ".."))
	if err != nil {
		t.Fatal(err)
	}
	return p
}
