package main

import (
	"context"
	"fmt"
	"io"
	"path/filepath"

	"github.com/scopewatch/scopewatch/inference"
	"github.com/scopewatch/scopewatch/internal/labelset"
	"github.com/scopewatch/scopewatch/tuning"
)

// tuneFeatures caches the backbone's features of labelled folders, so that
// the built-in head trainer runs its trials in Go without ONNX Runtime: the
// backbone is the expensive part and is the same for every trial.
func tuneFeatures(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := newFlagSet("tune features", stderr)
	var data listFlag
	fs.Var(&data, "data", "labelled folder with a labels.csv (path,label,slide); repeat for several")
	out := fs.String("out", "", "features file to write")
	mf := addModelFlags(fs, modelFlagOptions{batch: "images"})
	pos, err := parseInterleaved(fs, args)
	if err != nil {
		return err
	}
	if len(data) == 0 || *out == "" || len(pos) != 0 {
		return fmt.Errorf("%w: want tune features --model DIR --data DIR [--data DIR ...] --out FILE", errUsage)
	}
	var rows []labelset.Row
	for _, d := range data {
		rs, hasSlide, err := labelset.ReadCSV(filepath.Join(d, "labels.csv"))
		if err != nil {
			return fmt.Errorf("--data %s: %w", d, err)
		}
		if !hasSlide {
			// Without slide ids the head's validation split would put cells
			// of one slide on both sides and overstate accuracy.
			return fmt.Errorf("--data %s: labels.csv has no slide column; the head's validation split is by slide", d)
		}
		rows = append(rows, rs...)
	}
	if len(rows) == 0 {
		return fmt.Errorf("--data: no labelled images in %v", []string(data))
	}
	clf, bundle, err := mf.open(inference.ClassifierOptions{Engine: inference.EngineOptions{Sessions: throughputSessions(0)}})
	if err != nil {
		return err
	}
	defer bundle.Close()
	defer clf.Close()
	m := bundle.Manifest
	pos1 := m.ClassIndex("parasitized")
	neg := m.ClassIndex("uninfected")
	if pos1 < 0 || neg < 0 {
		return fmt.Errorf("model %s: classes %v: want uninfected and parasitized", bundle.Source, m.Classes)
	}
	f := &tuning.Features{
		Model:   fmt.Sprintf("%s %s sha256:%s", m.Name, m.Version, bundle.ManifestSHA256),
		Dim:     m.Outputs.FeaturesDim,
		Classes: m.Classes,
	}
	results := make([]inference.Result, len(rows))
	err = clf.Stream(ctx, len(rows), func(i int) inference.Input {
		return inference.Input{Path: rows[i].Path}
	}, func(r inference.Result) {
		results[r.Index] = r
	})
	if err != nil {
		return err
	}
	failed := 0
	for i, r := range results {
		if r.Err != nil {
			// A crop that cannot be read is left out, loudly: training on a
			// silently smaller set would be a different study.
			fmt.Fprintf(stderr, "skipped %s: %v\n", rows[i].Path, r.Err)
			failed++
			continue
		}
		label := neg
		if rows[i].Positive {
			label = pos1
		}
		f.X = append(f.X, r.Features...)
		f.Label = append(f.Label, label)
		f.Slide = append(f.Slide, rows[i].Slide)
		f.Path = append(f.Path, rows[i].Path)
	}
	if err := tuning.WriteFeatures(*out, f); err != nil {
		return err
	}
	fmt.Fprintf(stdout, "%s: %d images, %d features each, from %s (%d skipped)\n", *out, len(f.Label), f.Dim, f.Model, failed)
	if failed > 0 {
		return errSomeFailed
	}
	return nil
}
