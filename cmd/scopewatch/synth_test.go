package main

import (
	"bytes"
	"context"
	"encoding/csv"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/scopewatch/scopewatch/internal/synth"
)

func TestSynthFlagErrorsNameTheFlag(t *testing.T) {
	out := t.TempDir()
	tests := []struct {
		args []string
		flag string
	}{
		{[]string{"synth", "cells", "--n", "3"}, "-out"},
		{[]string{"synth", "cells", "--out", out}, "-n"},
		{[]string{"synth", "cells", "--out", out, "--n", "3", "--cells-per-slide", "0"}, "-cells-per-slide"},
		{[]string{"synth", "fields", "--out", out, "--n", "1", "--fields-per-slide", "-1"}, "-fields-per-slide"},
		{[]string{"synth", "cells", "--out", out, "--n", "3", "--blur", "-2"}, "-blur"},
		{[]string{"synth", "cells", "--out", out, "--n", "3", "--stain-shift", "500"}, "-stain-shift"},
		{[]string{"synth", "cells", "--out", out, "--n", "3", "--brightness", "2"}, "-brightness"},
		{[]string{"synth", "cells", "--out", out, "--n", "3", "--gamma", "0.01"}, "-gamma"},
		{[]string{"synth", "cells", "--out", out, "--n", "3", "--noise", "-0.1"}, "-noise"},
		{[]string{"synth", "cells", "--out", out, "--n", "3", "--jpeg-quality", "120"}, "-jpeg-quality"},
		{[]string{"synth", "cells", "--out", out, "--n", "3", "--magnification", "9"}, "-magnification"},
		{[]string{"synth", "cells", "--out", out, "--n", "3", "--prevalence", "1.5"}, "-prevalence"},
		{[]string{"synth", "cells", "--out", out, "--n", "3", "--workers", "-1"}, "-workers"},
		{[]string{"synth", "cells", "--out", out, "--n", "x"}, "-n"},
		{[]string{"synth", "pictures"}, "synth cells"},
	}
	for _, tt := range tests {
		var stdout, stderr bytes.Buffer
		code := run(context.Background(), tt.args, &stdout, &stderr)
		if code != 2 {
			t.Errorf("%v: exit %d, want 2 (usage)", tt.args, code)
		}
		if !strings.Contains(stderr.String(), tt.flag) {
			t.Errorf("%v: stderr %q does not name %s", tt.args, stderr.String(), tt.flag)
		}
	}
}

func TestSynthCellsCommand(t *testing.T) {
	dir := t.TempDir()
	var stdout, stderr bytes.Buffer
	code := run(context.Background(), []string{"synth", "cells", "--out", dir, "--n", "6", "--seed", "12", "--cells-per-slide", "3", "--prevalence", "0"}, &stdout, &stderr)
	if code != 0 {
		t.Fatalf("exit %d: %s", code, stderr.String())
	}
	f, err := os.Open(filepath.Join(dir, "labels.csv"))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	rows, err := csv.NewReader(f).ReadAll()
	if err != nil {
		t.Fatal(err)
	}
	if len(rows) != 7 || strings.Join(rows[0], ",") != "path,label,slide" {
		t.Fatalf("labels.csv: %v", rows)
	}
	for _, r := range rows[1:] {
		// An explicit --prevalence 0 means no parasites at all.
		if r[1] != "uninfected" {
			t.Errorf("--prevalence 0 wrote %v", r)
		}
		if r[2] != synth.SlideID(12, 0) && r[2] != synth.SlideID(12, 1) {
			t.Errorf("slide %q, want s12-0 or s12-1", r[2])
		}
		if _, err := os.Stat(filepath.Join(dir, r[0])); err != nil {
			t.Error(err)
		}
	}
}

func TestSynthFieldsCommand(t *testing.T) {
	dir := t.TempDir()
	var stdout, stderr bytes.Buffer
	code := run(context.Background(), []string{"synth", "fields", "--out", dir, "--n", "1", "--seed", "3", "--jpeg-quality", "85"}, &stdout, &stderr)
	if code != 0 {
		t.Fatalf("exit %d: %s", code, stderr.String())
	}
	slide := filepath.Join(dir, synth.SlideID(3, 0))
	if _, err := os.Stat(filepath.Join(slide, "field_000.jpg")); err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(filepath.Join(slide, "field_000.json"))
	if err != nil {
		t.Fatal(err)
	}
	var tr synth.FieldTruth
	if err := json.Unmarshal(b, &tr); err != nil {
		t.Fatal(err)
	}
	if tr.RBC < synth.MinFieldCells || tr.Knobs.JPEGQuality != 85 {
		t.Errorf("truth: %d red cells, knobs %+v", tr.RBC, tr.Knobs)
	}
}
