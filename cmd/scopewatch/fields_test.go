package main

import (
	"bytes"
	"context"
	"encoding/csv"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/scopewatch/scopewatch/internal/synth"
)

// TestFieldsCommand runs `scopewatch fields` on two synthetic slides with
// their truth files and a broken field: every cell row carries a probability
// and (the default model separating cells well) mostly the truth label, the
// summary names both slides with their truth, and the bad field makes the
// exit status 1 without stopping the others.
func TestFieldsCommand(t *testing.T) {
	model, keys := classifyModel(t)
	dir := t.TempDir()
	if _, err := synth.WriteFields(context.Background(), synth.FieldsConfig{Dir: dir, N: 2, Seed: 130001, FieldsPerSlide: 1}); err != nil {
		t.Fatal(err)
	}
	slides, _ := filepath.Glob(filepath.Join(dir, "*"))
	if len(slides) != 2 {
		t.Fatalf("synth wrote %v, want 2 slide folders", slides)
	}
	must(t, os.WriteFile(filepath.Join(slides[0], "broken.png"), []byte("\x89PNG\r\n\x1a\n"), 0o644))

	var stdout, stderr bytes.Buffer
	code := run(context.Background(), []string{"fields", "--model", model, "--keys", keys, dir}, &stdout, &stderr)
	if code != 1 {
		t.Fatalf("exit %d, want 1 (one field is broken); stderr:\n%s", code, stderr.String())
	}
	rows, err := csv.NewReader(&stdout).ReadAll()
	if err != nil {
		t.Fatal(err)
	}
	if len(rows) < 100 {
		t.Fatalf("%d rows for two 1920x1080 fields, want hundreds of cells", len(rows)-1)
	}
	if got := strings.Join(rows[0], ","); got != "slide,image,x,y,w,h,p_parasitized,truth,rejected" {
		t.Fatalf("header %q", got)
	}
	var labelled, rejected int
	for _, r := range rows[1:] {
		// A cell the plausibility gate refused has a reason and no score.
		if r[8] != "" {
			if r[6] != "" || !strings.HasPrefix(r[8], "rejected: ") {
				t.Fatalf("row %v: a refused cell must have no score and a reason", r)
			}
			rejected++
			continue
		}
		p, err := strconv.ParseFloat(r[6], 64)
		if err != nil || p < 0 || p > 1 {
			t.Fatalf("row %v: bad p_parasitized", r)
		}
		if r[7] == "parasitized" || r[7] == "uninfected" {
			labelled++
		}
	}
	if labelled < (len(rows)-1)*9/10 {
		t.Errorf("only %d of %d cells matched a truth cell", labelled, len(rows)-1)
	}
	// Nominal fields: the gate is calibrated to refuse 0.25% of their cells.
	if rejected*100 > len(rows)-1 {
		t.Errorf("%d of %d nominal field cells refused by the plausibility gate", rejected, len(rows)-1)
	}
	for _, want := range []string{filepath.Base(slides[0]), filepath.Base(slides[1]), "parasitemia MAE", "broken.png", "1 fields failed"} {
		if !strings.Contains(stderr.String(), want) {
			t.Errorf("stderr lacks %q:\n%s", want, stderr.String())
		}
	}
}
