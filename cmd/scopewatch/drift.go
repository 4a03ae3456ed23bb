package main

import (
	"cmp"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"text/tabwriter"

	"github.com/scopewatch/scopewatch/drift"
)

func runDrift(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	if len(args) == 0 || (args[0] != "replay" && args[0] != "eval" && args[0] != "build" && args[0] != "quality") {
		fmt.Fprintln(stderr, "usage: scopewatch drift replay --baseline FILE --input FILE.csv [--ert N]")
		fmt.Fprintln(stderr, "       scopewatch drift build --input TEST.csv --threshold T --out FILE")
		fmt.Fprintln(stderr, "       scopewatch drift eval --baseline FILE [--null FILE.csv] [--shift NAME=FILE.csv]... [--prevalence P]...")
		fmt.Fprintln(stderr, "       scopewatch drift quality --input FILE.csv (--baseline FILE | --reference REF.csv)")
		if len(args) > 0 && (args[0] == "-h" || args[0] == "--help") {
			return flag.ErrHelp
		}
		return fmt.Errorf("%w: want 'drift replay', 'drift eval', 'drift build' or 'drift quality'", errUsage)
	}
	switch args[0] {
	case "replay":
		return runDriftReplay(ctx, args[1:], stdout, stderr)
	case "build":
		return runDriftBuild(ctx, args[1:], stdout, stderr)
	case "quality":
		return runDriftQuality(ctx, args[1:], stdout, stderr)
	}
	return runDriftEval(ctx, args[1:], stdout, stderr)
}

// calibrationFlags are the detector settings both subcommands can override;
// any override recalibrates the baseline's thresholds by simulation.
type calibrationFlags struct {
	ert, warnERT, sims int
	windows, signals   string
	null               string
	slideCells         string
	cacheDir           string
}

func (c *calibrationFlags) register(fs *flag.FlagSet) {
	fs.IntVar(&c.ert, "ert", 0, "expected run time without drift for the alarm tier, in scores (0: the baseline's)")
	fs.IntVar(&c.warnERT, "warn-ert", 0, "expected run time for the warn tier (0: ert/10)")
	fs.IntVar(&c.sims, "sims", 0, "simulated streams for recalibration (0: the baseline's)")
	fs.StringVar(&c.windows, "windows", "", "comma-separated window sizes (empty: the baseline's)")
	fs.StringVar(&c.signals, "signals", "", "comma-separated signals to run: scores_cvm, positive_rate, embedding_mmd, focus_cvm (empty: the baseline's)")
	fs.StringVar(&c.null, "null-model", "", "null model for recalibration: exchangeable, bootstrap or slides (empty: the baseline's)")
	fs.StringVar(&c.cacheDir, "calibration-cache", defaultCalibrationCache(), "folder of cached recalibrations, by baseline and settings (empty: no cache)")
	fs.StringVar(&c.slideCells, "slide-cells", "", "MIN,MAX cells per simulated slide of the slides null model (empty: the baseline's; none: each reference slide's own count)")
}

// parseSlideCells parses MIN,MAX.
func parseSlideCells(flagName, v string) ([2]int, error) {
	a, b, ok := strings.Cut(v, ",")
	lo, err1 := strconv.Atoi(strings.TrimSpace(a))
	hi, err2 := strconv.Atoi(strings.TrimSpace(b))
	if !ok || err1 != nil || err2 != nil {
		return [2]int{}, fmt.Errorf("%w: -%s %q: want MIN,MAX cells per slide, e.g. 200,500", errUsage, flagName, v)
	}
	return [2]int{lo, hi}, nil
}

func (c *calibrationFlags) changed() bool {
	return c.ert != 0 || c.warnERT != 0 || c.sims != 0 || c.windows != "" || c.signals != "" || c.null != "" || c.slideCells != ""
}

// config returns the baseline's calibration settings with the overrides.
func (c *calibrationFlags) config(b *drift.Baseline) (drift.CalibrationConfig, error) {
	cfg := b.Detector.Config()
	if c.ert != 0 {
		cfg.ERT = c.ert
		cfg.WarnERT = drift.DefaultWarnERT(c.ert)
	}
	if c.warnERT != 0 {
		cfg.WarnERT = c.warnERT
	}
	if c.sims != 0 {
		cfg.Sims = c.sims
	}
	if c.null != "" {
		cfg.Null = c.null
	}
	if c.slideCells != "" {
		sc, err := parseSlideCells("slide-cells", c.slideCells)
		if err != nil {
			return cfg, err
		}
		cfg.SlideCells = sc
	}
	if c.windows != "" {
		cfg.Windows = nil
		for _, f := range strings.Split(c.windows, ",") {
			w, err := strconv.Atoi(strings.TrimSpace(f))
			if err != nil {
				return cfg, fmt.Errorf("%w: -windows %q: want comma-separated integers", errUsage, c.windows)
			}
			cfg.Windows = append(cfg.Windows, w)
		}
	}
	if c.signals != "" {
		cfg.Signals = map[string]float64{}
		for _, f := range strings.Split(c.signals, ",") {
			cfg.Signals[strings.TrimSpace(f)] = 1
		}
	}
	cfg.Horizon = 0
	return cfg, nil
}

func readRows(path string) (*drift.EvalRows, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	rows, err := drift.ReadCSV(f, 50_000_000)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return rows, nil
}

// prepareBaseline loads the baseline and recalibrates it when flags ask for
// it or when the input has no features or no focus but the detector wants
// them.
func prepareBaseline(ctx context.Context, path string, cf *calibrationFlags, haveFeatures, haveFocus bool, stderr io.Writer) (*drift.Baseline, error) {
	b, err := drift.LoadBaseline(path)
	if err != nil {
		return nil, err
	}
	cfg, err := cf.config(b)
	if err != nil {
		return nil, err
	}
	recal := cf.changed()
	if !haveFeatures && b.UsesSignal(drift.SignalEmbedding) {
		delete(cfg.Signals, drift.SignalEmbedding)
		fmt.Fprintln(stderr, "scopewatch drift: the input has no f0..fN feature columns; running without the embedding signal (recalibrating)")
		recal = true
	}
	if !haveFocus && b.UsesSignal(drift.SignalFocus) {
		delete(cfg.Signals, drift.SignalFocus)
		fmt.Fprintln(stderr, "scopewatch drift: the input has no focus column; running without the focus signal (recalibrating)")
		recal = true
	}
	if !recal {
		return b, nil
	}
	cache := calibrationCache{dir: cf.cacheDir}
	key := cache.key(b, cfg)
	if cb, ok := cache.get(b, key); ok {
		fmt.Fprintf(stderr, "scopewatch drift: thresholds from the calibration cache (%s)\n", cache.path(key))
		return cb, nil
	}
	fmt.Fprintf(stderr, "scopewatch drift: calibrating thresholds (ERT %d, warn %d, windows %v, %d simulated streams)...\n", cfg.ERT, cfg.WarnERT, cfg.Windows, cfg.Sims)
	cb, err := b.Recalibrate(ctx, cfg)
	if err != nil {
		return nil, err
	}
	if err := cache.put(key, cb.Detector); err != nil {
		fmt.Fprintf(stderr, "scopewatch drift: warning: calibration not cached: %v\n", err)
	}
	return cb, nil
}

// calibrationCache keeps recalibrated thresholds as DIR/KEY.json, KEY the
// sha256 of the baseline and the calibration settings: a recalibration takes
// seconds to minutes, and the same replay is often run again. An empty dir
// turns it off.
type calibrationCache struct{ dir string }

func defaultCalibrationCache() string {
	d, err := os.UserCacheDir()
	if err != nil {
		return ""
	}
	return filepath.Join(d, "scopewatch", "drift")
}

func (c calibrationCache) key(b *drift.Baseline, cfg drift.CalibrationConfig) string {
	spec, _ := json.Marshal(cfg)
	h := sha256.Sum256(append([]byte(b.Fingerprint()+"\n"), spec...))
	return hex.EncodeToString(h[:])
}

func (c calibrationCache) path(key string) string { return filepath.Join(c.dir, key+".json") }

func (c calibrationCache) get(b *drift.Baseline, key string) (*drift.Baseline, bool) {
	if c.dir == "" {
		return nil, false
	}
	raw, err := os.ReadFile(c.path(key))
	if err != nil {
		return nil, false
	}
	var cal drift.Calibration
	if err := json.Unmarshal(raw, &cal); err != nil {
		return nil, false
	}
	cb, err := b.WithCalibration(&cal)
	return cb, err == nil
}

func (c calibrationCache) put(key string, cal *drift.Calibration) error {
	if c.dir == "" {
		return nil
	}
	if err := os.MkdirAll(c.dir, 0o755); err != nil {
		return err
	}
	raw, err := json.Marshal(cal)
	if err != nil {
		return err
	}
	// Written whole, then renamed: a concurrent reader sees the old file
	// or the new one.
	tmp, err := os.CreateTemp(c.dir, ".cal-*")
	if err != nil {
		return err
	}
	if _, err := tmp.Write(raw); err != nil {
		tmp.Close()
		os.Remove(tmp.Name())
		return err
	}
	if err := tmp.Close(); err != nil {
		os.Remove(tmp.Name())
		return err
	}
	return os.Rename(tmp.Name(), c.path(key))
}

func runDriftReplay(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := newFlagSet("drift replay", stderr)
	basePath := fs.String("baseline", "", "baseline.json (required)")
	input := fs.String("input", "", "CSV with a p_parasitized column and optional focus and f0..fN feature columns (required)")
	plot := fs.String("plot", "", "write the last window's score histogram over the baseline's to this .png or .svg")
	summary := fs.Bool("summary", false, "at the end, print per window the descriptive statistics (with thresholds simulated at the window's size), the label-free performance estimate and the test statistics to stderr as JSON")
	var cf calibrationFlags
	cf.register(fs)
	if err := fs.Parse(args); err != nil {
		return err
	}
	if *basePath == "" || *input == "" {
		return fmt.Errorf("%w: -baseline and -input are required", errUsage)
	}
	if fs.NArg() > 0 {
		return fmt.Errorf("%w: unexpected argument %q", errUsage, fs.Arg(0))
	}
	rows, err := readRows(*input)
	if err != nil {
		return err
	}
	b, err := prepareBaseline(ctx, *basePath, &cf, rows.Features != nil, rows.Focus != nil, stderr)
	if err != nil {
		return err
	}
	m, err := drift.NewMonitor(b)
	if err != nil {
		return err
	}
	enc := json.NewEncoder(stdout)
	for i, s := range rows.Scores {
		if i%4096 == 0 && ctx.Err() != nil {
			return ctx.Err()
		}
		o := drift.Observation{Score: s}
		if m.UsesFeatures() {
			o.Features = rows.Features[i]
		}
		if m.UsesFocus() {
			o.Focus = rows.Focus[i]
		}
		evs, err := m.Observe(o)
		if err != nil {
			return fmt.Errorf("%s: row %d: %w", *input, i+1, err)
		}
		for _, ev := range evs {
			if err := enc.Encode(ev); err != nil {
				return err
			}
		}
	}
	if *summary {
		type windowSummary struct {
			Window      int                    `json:"window"`
			Descriptive drift.DescriptiveStats `json:"descriptive"`
			Above       []string               `json:"above_threshold"`
			Estimate    drift.Estimate         `json:"estimate"`
		}
		var ws []windowSummary
		for i, w := range m.Windows() {
			live := m.WindowScores(w)
			if len(live) == 0 {
				continue
			}
			d := b.Describe(live)
			ws = append(ws, windowSummary{Window: w, Descriptive: d, Above: d.Above(), Estimate: m.Performance()[i]})
		}
		j, _ := json.MarshalIndent(map[string]any{"windows": ws, "tests": m.Status()}, "", "  ")
		fmt.Fprintln(stderr, string(j))
	}
	if *plot != "" {
		ws := m.Windows()
		live := m.WindowScores(ws[len(ws)-1])
		if err := writePlot(*plot, b, live); err != nil {
			return err
		}
	}
	return nil
}

func writePlot(path string, b *drift.Baseline, live []float64) error {
	format := strings.TrimPrefix(strings.ToLower(filepath.Ext(path)), ".")
	f, err := os.Create(path)
	if err != nil {
		return fmt.Errorf("plot: %w", err)
	}
	err = drift.PlotHistogram(f, format, b, live, fmt.Sprintf("last %d scores vs baseline", len(live)))
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return fmt.Errorf("plot %s: %w", path, err)
	}
	return nil
}

type listFlag []string

func (l *listFlag) String() string     { return strings.Join(*l, ",") }
func (l *listFlag) Set(v string) error { *l = append(*l, v); return nil }

func runDriftEval(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := newFlagSet("drift eval", stderr)
	basePath := fs.String("baseline", "", "baseline.json (required)")
	nullPath := fs.String("null", "", "CSV of drift-free cells (new slides); empty: the baseline's own reference rows")
	nullMode := fs.String("null-sampling", "shuffle", "how streams draw from their pools: shuffle (without replacement, reshuffled), resample (with replacement) or slides (slide by slide, whole slides in random order; shifted pools too; needs a slide column)")
	runs := fs.Int("runs", 200, "runs per condition")
	nullRuns := fs.Int("null-runs", -1, "drift-free runs per detector (-1: as -runs; 0: skip the run-length table)")
	maxSteps := fs.Int("max-steps", 0, "cap on a drift-free run (0: 10 x ERT)")
	onset := fs.Int("onset", 0, "drift-free scores before a shift starts (0: twice the largest window)")
	after := fs.Int("after", 5000, "scores after the onset before a run counts as missed")
	within := fs.Int("within", 1000, "detection-delay target in scores")
	each := fs.Bool("each", false, "also calibrate and run each signal alone at the same ERT")
	seed := fs.Uint64("seed", 1, "seed of the evaluation streams")
	jsonOut := fs.Bool("json", false, "print JSON instead of tables")
	slideTier := fs.Bool("slide-tier", false, "evaluate the between-slide tier instead (one summary per slide, CUSUM over slides): drift-free run length in slides, and for each shift its detection within 5 slides when every slide shifts and when one slide does")
	slideERT := fs.Int("slide-ert", 200, "the between-slide tier's expected run time without drift, in slides")
	var shifts, prevalences listFlag
	fs.Var(&shifts, "shift", "NAME=FILE.csv of shifted cells (repeatable)")
	fs.Var(&prevalences, "prevalence", "prevalence shift: parasitized fraction of the shifted stream, drawn by label from the drift-free pool (repeatable)")
	var cf calibrationFlags
	cf.register(fs)
	if err := fs.Parse(args); err != nil {
		return err
	}
	if *basePath == "" {
		return fmt.Errorf("%w: -baseline is required", errUsage)
	}
	if *runs < 1 {
		return fmt.Errorf("%w: -runs %d: want >= 1", errUsage, *runs)
	}
	base, err := drift.LoadBaseline(*basePath)
	if err != nil {
		return err
	}
	var nullRows *drift.EvalRows
	if *nullPath != "" {
		if nullRows, err = readRows(*nullPath); err != nil {
			return err
		}
	} else {
		nullRows = base.ReferenceRows()
	}
	shiftRows := map[string]*drift.EvalRows{}
	var names []string
	haveFeatures := nullRows.HasFeatures()
	haveFocus := nullRows.Focus != nil
	for _, s := range shifts {
		name, path, ok := strings.Cut(s, "=")
		if !ok || name == "" || path == "" {
			return fmt.Errorf("%w: -shift %q: want NAME=FILE.csv", errUsage, s)
		}
		r, err := readRows(path)
		if err != nil {
			return err
		}
		haveFeatures = haveFeatures && r.Features != nil
		haveFocus = haveFocus && r.Focus != nil
		shiftRows[name] = r
		names = append(names, name)
	}
	if *slideTier {
		return evalSlideTier(base, nullRows, shiftRows, names, *slideERT, *runs, *seed, *jsonOut, stdout, stderr)
	}
	b, err := prepareBaseline(ctx, *basePath, &cf, haveFeatures, haveFocus, stderr)
	if err != nil {
		return err
	}
	if !haveFeatures {
		nullRows.DropFeatures()
	}
	newNull := func() drift.Sampler { return &drift.Shuffled{N: len(nullRows.Scores)} }
	newShift := func(r *drift.EvalRows) (func() drift.Sampler, error) {
		return func() drift.Sampler { return &drift.Shuffled{N: len(r.Scores)} }, nil
	}
	switch *nullMode {
	case "shuffle":
	case "resample":
		newNull = func() drift.Sampler { return drift.Resample{N: len(nullRows.Scores)} }
	case "slides":
		so, err := drift.NewSlideOrder(nullRows.Slides)
		if err != nil {
			return fmt.Errorf("-null-sampling slides: %s: %w", cmp.Or(*nullPath, "the baseline's reference"), err)
		}
		fmt.Fprintf(stderr, "scopewatch drift eval: drift-free pool of %d slides, sent slide by slide\n", so.Slides())
		newNull = func() drift.Sampler { return so.Clone() }
		newShift = func(r *drift.EvalRows) (func() drift.Sampler, error) {
			so, err := drift.NewSlideOrder(r.Slides)
			if err != nil {
				return nil, err
			}
			return func() drift.Sampler { return so.Clone() }, nil
		}
	default:
		return fmt.Errorf("%w: -null-sampling %q: want shuffle, resample or slides", errUsage, *nullMode)
	}
	ert := b.Detector.ERT
	if *maxSteps == 0 {
		*maxSteps = 10 * ert
	}
	maxW := 0
	for _, t := range b.Detector.Tests {
		maxW = max(maxW, t.Window)
	}
	if *onset == 0 {
		*onset = 2 * maxW
	}

	var nullTable []nullRow
	run := func(name string, bb *drift.Baseline) error {
		fmt.Fprintf(stderr, "scopewatch drift eval: %d drift-free runs, detector %s...\n", *nullRuns, name)
		res, err := bb.EvalRunLengths(ctx, nullRows, newNull, *nullRuns, *maxSteps, *seed)
		if err != nil {
			return err
		}
		nullTable = append(nullTable, nullRow{Detector: name, Target: bb.Detector.ERT, Result: res})
		return nil
	}
	if *nullRuns < 0 {
		*nullRuns = *runs
	}
	if *nullRuns > 0 {
		if err := run("combined", b); err != nil {
			return err
		}
	}
	if *each && *nullRuns > 0 {
		cfg, err := cf.config(b)
		if err != nil {
			return err
		}
		for _, s := range driftSignals {
			if _, ok := cfg.Signals[s]; !ok || (s == drift.SignalEmbedding && !haveFeatures) || (s == drift.SignalFocus && !haveFocus) {
				continue
			}
			c := cfg
			c.Signals = map[string]float64{s: 1}
			fmt.Fprintf(stderr, "scopewatch drift eval: calibrating %s alone...\n", s)
			bs, err := b.Recalibrate(ctx, c)
			if err != nil {
				return err
			}
			if err := run(s, bs); err != nil {
				return err
			}
		}
	}

	type shiftRow struct {
		Shift  string            `json:"shift"`
		Level  string            `json:"level"`
		Result drift.DelayResult `json:"result"`
	}
	var shiftTable []shiftRow
	dc := drift.DelayConfig{Runs: *runs, Onset: *onset, After: *after, Within: *within, Seed: *seed + 1}
	for _, name := range names {
		r := shiftRows[name]
		if !haveFeatures {
			r.DropFeatures()
		}
		for _, lvl := range []string{drift.LevelWarn, drift.LevelAlarm} {
			fmt.Fprintf(stderr, "scopewatch drift eval: shift %s (%s)...\n", name, lvl)
			c := dc
			c.Level = lvl
			ns, err := newShift(r)
			if err != nil {
				return fmt.Errorf("shift %s: %w", name, err)
			}
			res, err := b.EvalDelay(ctx, nullRows, newNull, r, ns, c)
			if err != nil {
				return fmt.Errorf("shift %s: %w", name, err)
			}
			shiftTable = append(shiftTable, shiftRow{Shift: name, Level: lvl, Result: res})
		}
	}
	for _, p := range prevalences {
		rate, err := strconv.ParseFloat(p, 64)
		if err != nil {
			return fmt.Errorf("%w: -prevalence %q: want a fraction", errUsage, p)
		}
		if nullRows.Labels == nil {
			return fmt.Errorf("%w: -prevalence needs labels in the drift-free pool (a truth column)", errUsage)
		}
		for _, lvl := range []string{drift.LevelWarn, drift.LevelAlarm} {
			name := fmt.Sprintf("prevalence %.0f%%", 100*rate)
			fmt.Fprintf(stderr, "scopewatch drift eval: %s (%s)...\n", name, lvl)
			c := dc
			c.Level = lvl
			var perr error
			res, err := b.EvalDelay(ctx, nullRows, newNull, nullRows, func() drift.Sampler {
				s, err := drift.NewPrevalence(nullRows.Labels, rate)
				if err != nil {
					perr = err
					return drift.Resample{N: len(nullRows.Scores)}
				}
				return s
			}, c)
			if err == nil {
				err = perr
			}
			if err != nil {
				return fmt.Errorf("%s: %w", name, err)
			}
			shiftTable = append(shiftTable, shiftRow{Shift: name, Level: lvl, Result: res})
		}
	}

	if *jsonOut {
		return json.NewEncoder(stdout).Encode(map[string]any{"null": nullTable, "shifts": shiftTable})
	}
	if len(nullTable) > 0 {
		if err := printNullTable(stdout, b, nullTable); err != nil {
			return err
		}
	}
	if len(shiftTable) > 0 {
		fmt.Fprintln(stdout)
		tw := tabwriter.NewWriter(stdout, 0, 0, 2, ' ', tabwriter.AlignRight)
		fmt.Fprintf(tw, "shift\ttier\truns\tfalse before onset (reset)\tdetected\twithin %d\tmissed\tmean delay\tmedian delay\tfirst signal\t\n", *within)
		for _, r := range shiftTable {
			res := r.Result
			valid := res.Runs
			fmt.Fprintf(tw, "%s\t%s\t%d\t%d\t%d\t%.1f%%\t%d\t%.0f\t%.0f\t%s\t\n", r.Shift, r.Level, res.Runs, res.FalseBeforeOnset, res.Detected,
				100*float64(res.Within)/float64(max(valid, 1)), res.Missed, res.MeanDelay, res.MedianDelay, formatCounts(res.BySignal))
		}
		if err := tw.Flush(); err != nil {
			return err
		}
	}
	return nil
}

// evalSlideTier is drift eval --slide-tier.
func evalSlideTier(b *drift.Baseline, nullRows *drift.EvalRows, shiftRows map[string]*drift.EvalRows, names []string, ert, runs int, seed uint64, jsonOut bool, stdout, stderr io.Writer) error {
	fmt.Fprintf(stderr, "scopewatch drift eval: calibrating the between-slide tier (ERT %d slides)...\n", ert)
	t, err := drift.NewSlideTier(b, drift.SlideTierConfig{ERT: ert, Seed: seed})
	if err != nil {
		return err
	}
	null, err := b.SlideSummaries(nullRows)
	if err != nil {
		return fmt.Errorf("-null: %w", err)
	}
	type row struct {
		Shift  string                `json:"shift"`
		Mode   string                `json:"mode"`
		Result drift.SlideTierResult `json:"result"`
	}
	rows := []row{{Shift: "none", Mode: "drift-free", Result: t.EvalSlideTier(null, nil, runs, 0, 0, 0, seed)}}
	for _, name := range names {
		sh, err := b.SlideSummaries(shiftRows[name])
		if err != nil {
			return fmt.Errorf("shift %s: %w", name, err)
		}
		rows = append(rows,
			row{Shift: name, Mode: "every slide", Result: t.EvalSlideTier(null, sh, runs, 8, 20, 5, seed+1)},
			row{Shift: name, Mode: "one slide", Result: t.EvalSlideTier(null, sh, runs, 8, 1, 1, seed+2)})
	}
	if jsonOut {
		return json.NewEncoder(stdout).Encode(map[string]any{"signals": t.Signals(), "slide_tier": rows})
	}
	fmt.Fprintf(stdout, "between-slide tier: %d null slides, signals %v, ERT %d slides\n", len(null), t.Signals(), ert)
	tw := tabwriter.NewWriter(stdout, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintf(tw, "shift\tmode\truns\tmean run (slides)\tcensored\tfalse before onset\tdetected\twithin 5 slides (one: on it)\tmean delay\tfirst signal\t\n")
	for _, r := range rows {
		res := r.Result
		fmt.Fprintf(tw, "%s\t%s\t%d\t%.1f\t%d\t%d\t%d\t%.1f%%\t%.2f\t%s\t\n", r.Shift, r.Mode, res.Runs, res.MeanRun, res.Censored, res.FalseEarly, res.Detected,
			100*float64(res.Within)/float64(max(res.Runs, 1)), res.MeanDelay, formatSlideCounts(res.BySignal))
	}
	return tw.Flush()
}

func formatSlideCounts(m map[string]int) string {
	var parts []string
	for _, s := range slices.Sorted(maps.Keys(m)) {
		parts = append(parts, fmt.Sprintf("%s:%d", s, m[s]))
	}
	return strings.Join(parts, " ")
}

func warnTarget(b *drift.Baseline, _ string, alarmERT int) int {
	if b.Detector.ERT == alarmERT {
		return b.Detector.WarnERT
	}
	return drift.DefaultWarnERT(alarmERT)
}

// driftSignals are the calibrated signals in table order.
var driftSignals = []string{drift.SignalScores, drift.SignalRate, drift.SignalEmbedding, drift.SignalFocus}

func formatCounts(m map[string]int) string {
	var parts []string
	for _, s := range driftSignals {
		if m[s] > 0 {
			parts = append(parts, fmt.Sprintf("%s:%d", s, m[s]))
		}
	}
	return strings.Join(parts, " ")
}

// runDriftBuild makes a baseline from test-set scores computed elsewhere (a
// CSV with p_parasitized, truth and optional f0..fN), for evaluations and
// for fleets that score their test sets outside the device.
func runDriftBuild(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := newFlagSet("drift build", stderr)
	input := fs.String("input", "", "test-set CSV: p_parasitized, truth, optional f0..fN (required)")
	out := fs.String("out", "", "baseline.json to write (required)")
	threshold := fs.Float64("threshold", 0, "the model's decision threshold on p_parasitized (required)")
	version := fs.String("model-version", "", "model version to record")
	refPrev := fs.Float64("reference-prevalence", 0, "draw the drift reference with this parasitized fraction (e.g. 0.05 for field slides when the test set is balanced crops); 0: as the test set")
	ert := fs.Int("ert", 5000, "expected run time without drift of the alarm tier, in scores")
	warnERT := fs.Int("warn-ert", 0, "expected run time of the warn tier (0: ert/10)")
	windows := fs.String("windows", "50,200,1000", "comma-separated detector window sizes")
	sims := fs.Int("sims", 2000, "simulated drift-free streams for the threshold calibration")
	null := fs.String("null-model", drift.NullExchangeable, "null model of the calibration: exchangeable or bootstrap")
	signals := fs.String("signals", "", "comma-separated signals (empty: all the input supports)")
	seed := fs.Uint64("seed", 1, "seed of the bootstrap, projection and calibration")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if *input == "" || *out == "" || *threshold == 0 {
		return fmt.Errorf("%w: -input, -out and -threshold are required", errUsage)
	}
	rows, err := readRows(*input)
	if err != nil {
		return err
	}
	if rows.Labels == nil {
		return fmt.Errorf("%s: a baseline needs the truth column (0/1 or uninfected/parasitized)", *input)
	}
	cf := calibrationFlags{windows: *windows, signals: *signals}
	cfg := drift.CalibrationConfig{ERT: *ert, WarnERT: *warnERT, Sims: *sims, Null: *null}
	tmp := &drift.Baseline{Detector: &drift.Calibration{Weights: map[string]float64{}}}
	c, err := cf.config(tmp)
	if err != nil {
		return err
	}
	cfg.Windows = c.Windows
	if *signals != "" {
		cfg.Signals = c.Signals
	}
	fmt.Fprintf(stderr, "scopewatch drift build: %d cells; calibrating (ERT %d, windows %v, %d simulated streams)...\n", len(rows.Scores), cfg.ERT, cfg.Windows, cfg.Sims)
	b, err := drift.BuildBaseline(ctx, rows.Scores, rows.Labels, rows.Features, *threshold, drift.BaselineConfig{ModelVersion: *version, Seed: *seed, ReferencePrevalence: *refPrev, Slides: rows.Slides, Focus: rows.Focus, Detector: cfg})
	if err != nil {
		return err
	}
	if err := b.Save(*out); err != nil {
		return err
	}
	m := b.Metrics
	fmt.Fprintf(stdout, "wrote %s: %d cells, accuracy %.4f (%.4f-%.4f), AUC %.4f (%.4f-%.4f), calibration map kept: %v\n",
		*out, m.N, m.Accuracy.Value, m.Accuracy.Lo, m.Accuracy.Hi, m.AUC.Value, m.AUC.Lo, m.AUC.Hi, b.ECE.Kept)
	return nil
}

type nullRow struct {
	Detector string           `json:"detector"`
	Target   int              `json:"target_ert"`
	Result   drift.NullResult `json:"result"`
}

func printNullTable(stdout io.Writer, b *drift.Baseline, nullTable []nullRow) error {
	tw := tabwriter.NewWriter(stdout, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintf(tw, "detector\ttier\ttarget ERT\truns\tmean run length\t± s.e.\tratio\tp10\tmedian\tp90\tcensored\tfirst signal\t\n")
	for _, r := range nullTable {
		for _, tier := range []struct {
			name   string
			target int
			rl     drift.RunLengths
		}{{"warn", r.Result.Warn.Runs, r.Result.Warn}, {"alarm", r.Target, r.Result.Alarm}} {
			target := tier.target
			if tier.name == "warn" {
				target = warnTarget(b, r.Detector, r.Target)
			}
			fmt.Fprintf(tw, "%s\t%s\t%d\t%d\t%.0f\t%.0f\t%.2f\t%.0f\t%.0f\t%.0f\t%d\t%s\t\n", r.Detector, tier.name, target, tier.rl.Runs, tier.rl.Mean, tier.rl.SE, tier.rl.Mean/float64(target), tier.rl.P10, tier.rl.Median, tier.rl.P90, tier.rl.Censored, formatCounts(tier.rl.BySignal))
		}
	}
	return tw.Flush()
}
