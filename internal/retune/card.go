package retune

import (
	"bytes"
	"fmt"
	"math"
	"slices"
	"strings"

	"github.com/scopewatch/scopewatch/drift"
	"github.com/scopewatch/scopewatch/tuning"
)

// card renders MODEL_CARD.md from the decision: every figure in it is one
// this retune measured.
func (r *run) card(version string, base *drift.Baseline, backboneSHA string) ([]byte, error) {
	d := r.dec
	inc := r.cfg.Incumbent.Manifest
	var b bytes.Buffer
	p := func(format string, args ...any) { fmt.Fprintf(&b, format, args...) }
	p("# %s %s\n\n", inc.Name, version)
	p("Retuned by `scopewatch tune retune` on %s from **%s %s** (manifest sha256 %s).\n\n",
		r.now().UTC().Format("2006-01-02 15:04 UTC"), inc.Name, inc.Version, r.cfg.Incumbent.ManifestSHA256)
	p("**Trained:** %s (backbone.onnx sha256 %s).\n\n", d.Trained, backboneSHA)

	p("## Snapshot\n\n")
	p("- Snapshot `%s`: sha256 over each image's content hash with its label, slide, device and domain, sorted. %d images", d.Snapshot, d.Samples)
	if d.Duplicates > 0 {
		p(" (%d exact duplicates left out)", d.Duplicates)
	}
	p(".\n")
	for _, dom := range []string{DomainNominal, DomainFeedback} {
		if len(d.Inputs[dom]) > 0 {
			p("- %s: %s\n", dom, strings.Join(d.Inputs[dom], ", "))
		}
	}
	p("- Splits by whole %s, per domain, fixed by the snapshot's hash; the test split was evaluated once (ledger `%s`).\n\n", groupingWords(d.Grouping), r.cfg.Ledger.Path())
	p("| domain | split | images | slides | parasitized |\n|---|---|---:|---:|---:|\n")
	for _, c := range d.Splits {
		p("| %s | %s | %d | %d | %d |\n", c.Domain, c.Split, c.Samples, c.Slides, c.Positive)
	}

	st := d.Study
	p("\n## Study\n\n")
	p("Study `%s` on the train and validation splits (the test split never entered a trial): %d trials, %d complete, %d pruned, %d failed; metric %s.\n\n",
		st.Name, st.Trials, st.Complete, st.Pruned, st.Failed, st.Metric)
	if len(st.Finalists) > 0 {
		p("| finalist | parameters | search value | replicates: mean ± std (n) |\n|---|---|---:|---|\n")
		for _, f := range st.Finalists {
			p("| trial %d | %s | %.4f | %s (%d) |\n", f.Trial, f.Params.String(), f.SearchValue, meanStd(f.Mean, f.Std), len(f.Values))
		}
		p("\n")
	}
	if r.newFeat == nil {
		p("Chosen: trial %d (%s), seed %d, %s %.4f, retrained to the identical value; batch size %d, at most %d epochs with early stopping.\n\n",
			st.Winner, st.Params.String(), st.Seed, st.Metric, st.Value, st.BatchSize, st.Epochs)
	} else {
		p("Chosen: trial %d (%s); shipped: the network its replicate trial %d (seed %d, %s %.4f) exported, at most %d epochs with early stopping from the incumbent's weights. Its scores here are ONNX Runtime's on the exported network, as a device computes them.\n\n",
			st.Winner, st.Params.String(), st.Run, st.Seed, st.Metric, st.Value, st.Epochs)
	}
	for _, w := range st.Warnings {
		p("- Warning: %s\n", w)
	}
	if len(st.Warnings) > 0 {
		p("\n")
	}
	prev := "the split's own prevalence"
	if d.Prevalence > 0 {
		prev = fmt.Sprintf("%.1f%% parasitized, the incumbent baseline's prevalence", 100*d.Prevalence)
	}
	p("Decision threshold **%.4f**, chosen on the validation split by the recipe's rule: fewest misclassified cells, counted at %s; ties nearest 0.5. The incumbent's is %.4f.\n\n", d.Threshold, prev, inc.Threshold)

	p("## Sealed test\n\n")
	p("Each model at its own threshold on the same test cells; 95%% intervals from %d bootstrap resamples of whole slides, paired between the models.\n\n", d.Test.BootstrapReps)
	writeComparison := func(name string, c tuning.Comparison) {
		p("**%s** (%d cells, %d parasitized, %d slides)\n\n", name, c.New.N, c.New.Positives, c.New.Slides)
		p("| metric | %s | %s | difference |\n|---|---|---|---|\n", version, inc.Version)
		rows := []struct {
			n    string
			a, b tuning.Estimate
			diff *tuning.Estimate
		}{
			{"accuracy", c.New.Accuracy, c.Incumbent.Accuracy, &c.AccuracyDiff},
			{"sensitivity", c.New.Sensitivity, c.Incumbent.Sensitivity, &c.SensitivityDiff},
			{"specificity", c.New.Specificity, c.Incumbent.Specificity, &c.SpecificityDiff},
			{"AUC", c.New.AUC, c.Incumbent.AUC, nil},
		}
		for _, x := range rows {
			diff := ""
			if x.diff != nil {
				diff = fmt.Sprintf("%+.4f (%+.4f to %+.4f)", x.diff.Value, x.diff.Lo, x.diff.Hi)
			}
			p("| %s | %s | %s | %s |\n", x.n, est(x.a), est(x.b), diff)
		}
		p("\n")
	}
	writeComparison("All test slides", *d.Test)
	doms := make([]string, 0, len(d.PerDomain))
	for k := range d.PerDomain {
		doms = append(doms, k)
	}
	slices.Sort(doms)
	for _, k := range doms {
		writeComparison("Domain "+k, d.PerDomain[k])
	}
	p("Accepted because the accuracy difference's interval lies above 0 and the nominal domain's accuracy fell by at most %.3f.\n\n", r.cfg.MaxNominalDrop)

	p("## Baseline\n\n")
	p("`baseline.json` is built from the sealed test split's %d cells with the new model's scores, focus and features, as `scopewatch baseline` builds one", base.TestSize)
	if base.Detector != nil {
		how := "cells of all slides mixed"
		if base.Detector.Null == drift.NullSlides {
			how = "streams sent slide by slide"
		}
		p(", detectors calibrated for an expected run time of %d cells without drift (%d simulated streams, %s)", base.Detector.ERT, base.Detector.Sims, how)
	}
	p(".\n\n")
	if base.Plausibility != nil {
		p("The plausibility gate's crop reference is calibrated on the validation and test cells (%d; colour and texture statistics, and the new model's features), targeting %.2f%% of such cells refused. ", base.Plausibility.Cells(), 100*base.Plausibility.FalseRejection)
	} else {
		p("**No plausibility reference for crops**: too few validation and test cells to calibrate one; a device serving this bundle refuses only crops under its minimum size. ")
	}
	switch {
	case base.FieldPlausibility == nil:
		p("The incumbent had no reference for segmented field cells, so field cells are checked for size only.\n\n")
	case r.newFeat == nil:
		p("The reference for segmented field cells is the incumbent's (the backbone is unchanged).\n\n")
	default:
		p("The reference for segmented field cells keeps the incumbent's colour and texture ranges; its feature gate, made in the old backbone's feature space, is dropped, so field cells are not checked on features until a field reference is made for this model (`scopewatch baseline --fields`).\n\n")
	}
	if len(d.Warnings) > 0 {
		p("## Warnings\n\n")
		for _, w := range d.Warnings {
			p("- %s\n", w)
		}
		p("\n")
	}
	p("## Limits\n\n")
	if r.newFeat == nil {
		p("- Only the head was retrained. A shift the incumbent's backbone features cannot separate (measured: a 60° stain hue shift on synthetic crops) is not fully recovered by a head.\n")
	}
	p("- The threshold was chosen on validation crops reweighted to a counting prevalence, not on segmented field cells as the default bundle's was.\n")
	p("- The test split is %d%% of the snapshot's slides; its intervals are wide when the snapshot has few slides.\n", int(math.Round(100*testShare(d.Splits))))
	return b.Bytes(), nil
}

func groupingWords(g map[string]string) string {
	var parts []string
	keys := make([]string, 0, len(g))
	for k := range g {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	for _, k := range keys {
		parts = append(parts, fmt.Sprintf("%ss (%s)", g[k], k))
	}
	return strings.Join(parts, ", ")
}

func testShare(cs []tuning.SplitCount) float64 {
	var test, all int
	for _, c := range cs {
		all += c.Slides
		if c.Split == tuning.SplitTest {
			test += c.Slides
		}
	}
	if all == 0 {
		return 0
	}
	return float64(test) / float64(all)
}

func est(e tuning.Estimate) string {
	return fmt.Sprintf("%.4f (%.4f–%.4f)", e.Value, e.Lo, e.Hi)
}

func meanStd(mean, std float64) string {
	if math.IsNaN(std) {
		return fmt.Sprintf("%.4f", mean)
	}
	return fmt.Sprintf("%.4f ± %.4f", mean, std)
}
