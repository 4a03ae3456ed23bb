package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"slices"

	"github.com/scopewatch/scopewatch/drift"
)

const driftQualityUsage = `usage: scopewatch drift quality --input FILE.csv (--baseline FILE | --reference REF.csv) [--json]

Runs the per-slide quality gate on every slide of a CSV of classified cells
(scopewatch baseline --score-only --csv writes one, with the slide column
and the a_NAME appearance columns the gate reads; of cells scored below
the threshold, as the reference is made): which slides' stain,
brightness, sharpness or framing lie outside the spread between the
reference slides. The reference is the baseline's, or one made from a
CSV of nominal slides (--reference) to try the gate before a baseline has
it. Prints each flagged slide's message and the share of slides flagged,
by check.

`

type qualitySummary struct {
	Slides    int                            `json:"slides"`
	Judged    int                            `json:"judged"`
	Flagged   int                            `json:"flagged"`
	Share     float64                        `json:"share"`
	ByCheck   map[string]int                 `json:"by_check"`
	Reference *drift.SlideQuality            `json:"-"`
	Flags     map[string][]drift.QualityFlag `json:"flags"`
}

func runDriftQuality(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := newFlagSet("drift quality", stderr)
	fs.Usage = func() { fmt.Fprint(stderr, driftQualityUsage); fs.PrintDefaults() }
	input := fs.String("input", "", "CSV of classified cells with slide and a_NAME columns (required)")
	basePath := fs.String("baseline", "", "baseline.json whose slide quality reference to use")
	refPath := fs.String("reference", "", "CSV of nominal slides to make the reference from instead")
	falseFlag := fs.Float64("false-flag", 0, "with --reference: target share of nominal slides flagged (0: the default 0.005)")
	threshold := fs.Float64("threshold", 0, "decision threshold: the gate reads cells scored below it (0: the baseline's, or 0.5 with --reference)")
	jsonOut := fs.Bool("json", false, "print one JSON object instead of text")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if *input == "" || (*basePath == "") == (*refPath == "") {
		return fmt.Errorf("%w: want --input and one of --baseline or --reference", errUsage)
	}
	var q *drift.SlideQuality
	thr := *threshold
	if *basePath != "" {
		b, err := drift.LoadBaseline(*basePath)
		if err != nil {
			return err
		}
		if thr == 0 {
			thr = b.Threshold
		}
		if q = b.SlideQuality; q == nil {
			return fmt.Errorf("%s has no slide quality reference (made without appearance statistics or whole slides); make one with --reference", *basePath)
		}
	} else {
		ref, err := readRows(*refPath)
		if err != nil {
			return err
		}
		if ref.Slides == nil || ref.Appearance == nil {
			return fmt.Errorf("%s: the reference needs a slide column and a_NAME appearance columns (scopewatch baseline --score-only --csv writes them)", *refPath)
		}
		if thr == 0 {
			thr = 0.5
		}
		var stats [][]float64
		var slides []string
		for i, p := range ref.Scores {
			if p < thr {
				stats, slides = append(stats, ref.Appearance[i]), append(slides, ref.Slides[i])
			}
		}
		if q, err = drift.BuildSlideQuality(ref.AppearanceNames, stats, slides, drift.SlideQualityConfig{FalseFlag: *falseFlag}); err != nil {
			return fmt.Errorf("%s: %w", *refPath, err)
		}
	}
	rows, err := readRows(*input)
	if err != nil {
		return err
	}
	if rows.Slides == nil || rows.Appearance == nil {
		return fmt.Errorf("%s: needs a slide column and a_NAME appearance columns (scopewatch baseline --score-only --csv writes them)", *input)
	}
	bySlide := map[string]*drift.SlideAppearance{}
	var order []string
	for i, s := range rows.Slides {
		a := bySlide[s]
		if a == nil {
			a = &drift.SlideAppearance{}
			bySlide[s] = a
			order = append(order, s)
		}
		if rows.Scores[i] < thr {
			a.Add(rows.AppearanceNames, rows.Appearance[i])
		}
	}
	slices.Sort(order)
	sum := qualitySummary{Slides: len(order), ByCheck: map[string]int{}, Flags: map[string][]drift.QualityFlag{}, Reference: q}
	for _, c := range q.Checks {
		sum.ByCheck[c.Name] = 0
	}
	for _, s := range order {
		flags, judged := q.Check(s, *bySlide[s])
		if !judged {
			continue
		}
		sum.Judged++
		if len(flags) > 0 {
			sum.Flagged++
			sum.Flags[s] = flags
		}
		for _, f := range flags {
			sum.ByCheck[f.Check]++
		}
	}
	if sum.Judged > 0 {
		sum.Share = float64(sum.Flagged) / float64(sum.Judged)
	}
	if *jsonOut {
		return json.NewEncoder(stdout).Encode(sum)
	}
	fmt.Fprintf(stdout, "reference: %d slides, %d cells, target false-flag rate %.2g%% per slide; reference slides flagged leaving each out: %.1f%%\n",
		q.Slides, q.Cells, 100*q.FalseFlag, 100*q.ReferenceFlagged)
	for _, s := range order {
		for _, f := range sum.Flags[s] {
			fmt.Fprintln(stdout, f.Message)
		}
	}
	fmt.Fprintf(stdout, "%d slides, %d judged (at least %d cells), %d flagged (%.1f%%)", sum.Slides, sum.Judged, drift.MinQualityCells, sum.Flagged, 100*sum.Share)
	for _, c := range q.Checks {
		fmt.Fprintf(stdout, "; %s %d", c.Name, sum.ByCheck[c.Name])
	}
	fmt.Fprintln(stdout)
	return nil
}
