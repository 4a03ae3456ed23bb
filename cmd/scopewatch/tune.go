package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"maps"
	"math"
	"os"
	"os/exec"
	"path/filepath"
	"time"

	"github.com/schollz/progressbar/v3"
	"golang.org/x/term"

	"github.com/scopewatch/scopewatch/tuning"
)

const tuneUsage = `usage: scopewatch tune <subcommand> [flags]

subcommands:
  run STUDY.yaml --out DIR [--resume] [--format text|json] [--features FILE]
        run a study into the study folder DIR: exploration, exploitation,
        pruning and the finalists' replicates, every ask and tell journalled
        in DIR/journal.jsonl; --resume continues a study folder after a crash
        (finished trials are kept, interrupted ones rerun with the same
        parameters and seed). With --format json the last stdout line is one
        object: best, trials, complete, pruned, failed, epochs, replicates.
  report DIR
        redraw DIR/report.html and DIR/plots from the journal
  features --model DIR --data DIR [--data DIR ...] --out FILE
        cache the backbone features, labels and slide ids of labelled folders
        (labels.csv: path,label,slide) for studies with builtin: head
  retune --model DIR --data DIR [--data DIR ...] [--nominal DIR ...] --out DIR
         --key FILE [--study FILE] [--ledger FILE]
        retrain the incumbent's head on labelled feedback (and nominal data):
        a content-addressed snapshot split by slide, a study on train and
        validation, the sealed test evaluated once, and a signed bundle with
        a new baseline and model card in DIR/bundle when the new model is
        better than the incumbent; otherwise a refusal with its reasons in
        DIR/decision.json. Rerun with the same inputs to resume.
  worker --broker URL --db FILE --out DIR --key FILE --dataset DIR/collect.db
         --model DIR [--model DIR ...] [--nominal DIR ...] [--share GROUP]
        the fleet service: collects feedback and labels into the dataset,
        takes retune requests ({root}/{site}/retune/request) into a queue in
        --db (deduplicated by id; one open job per site), retunes the
        request's model on the site's labelled feedback, and publishes an
        accepted bundle as the site's retained offer with its chunks. Job
        states go to {root}/{site}/retune/event; a stopped worker resumes
        its job.

The study file and the trial protocol are described in the tuning package's
documentation (go doc github.com/scopewatch/scopewatch/tuning).
`

func runTune(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	if len(args) == 0 {
		fmt.Fprint(stderr, tuneUsage)
		return fmt.Errorf("%w: missing subcommand", errUsage)
	}
	switch args[0] {
	case "-h", "--help", "help":
		fmt.Fprint(stdout, tuneUsage)
		return nil
	case "run":
		return tuneRun(ctx, args[1:], stdout, stderr)
	case "report":
		return tuneReport(args[1:], stdout, stderr)
	case "features":
		return tuneFeatures(ctx, args[1:], stdout, stderr)
	case "retune":
		return tuneRetune(ctx, args[1:], stdout, stderr)
	case "worker":
		return tuneWorker(ctx, args[1:], stdout, stderr)
	default:
		fmt.Fprint(stderr, tuneUsage)
		return fmt.Errorf("%w: unknown subcommand %q", errUsage, args[0])
	}
}

func tuneRun(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := newFlagSet("tune run", stderr)
	out := fs.String("out", "", "study folder (created; holds the journal, the trials' folders and the report)")
	resume := fs.Bool("resume", false, "continue the study already in --out")
	format := fs.String("format", "text", "summary on stdout: text or json (one object, the last line)")
	features := fs.String("features", "", "features file for builtin: head (overrides the study's objective.features)")
	pos, err := parseInterleaved(fs, args)
	if err != nil {
		return err
	}
	if len(pos) != 1 || *out == "" {
		return fmt.Errorf("%w: want tune run STUDY.yaml --out DIR [--resume] [--format text|json]", errUsage)
	}
	if *format != "text" && *format != "json" {
		return fmt.Errorf("%w: --format must be text or json, got %q", errUsage, *format)
	}
	study, err := tuning.Load(pos[0])
	if err != nil {
		return err
	}
	if *features != "" {
		if study.Objective.Builtin != tuning.BuiltinHead {
			return fmt.Errorf("%w: --features is for studies with builtin: head", errUsage)
		}
		if study.Objective.Features, err = filepath.Abs(*features); err != nil {
			return fmt.Errorf("--features: %w", err)
		}
	}
	journal := filepath.Join(*out, "journal.jsonl")
	switch _, err := os.Stat(journal); {
	case err == nil && !*resume:
		return fmt.Errorf("%w: %s already holds a study; continue it with --resume or choose another --out", errUsage, *out)
	case errors.Is(err, os.ErrNotExist) && *resume:
		return fmt.Errorf("%w: --resume: %s has no journal to continue", errUsage, *out)
	case err != nil && !errors.Is(err, os.ErrNotExist):
		return fmt.Errorf("study folder: %w", err)
	}

	trial, err := studyObjective(study, *out, stderr)
	if err != nil {
		return err
	}
	r := &tuning.Runner{Study: study, Dir: *out, Trial: trial}
	// On a terminal a progress bar says how far the study is; elsewhere
	// (CI, a retune worker's log) one line per finished trial does.
	var bar *progressbar.ProgressBar
	if f, ok := stderr.(*os.File); ok && term.IsTerminal(int(f.Fd())) {
		bar = progressbar.NewOptions(study.Budget.Trials+study.Replicates.Finalists*study.Replicates.Seeds,
			progressbar.OptionSetWriter(stderr),
			progressbar.OptionSetDescription(study.Name),
			progressbar.OptionShowCount(),
			progressbar.OptionSetItsString("trials"),
			progressbar.OptionThrottle(200*time.Millisecond),
			progressbar.OptionClearOnFinish())
		r.Progress = func(done, total int, best *tuning.Trial) {
			bar.ChangeMax(total)
			if best != nil {
				bar.Describe(fmt.Sprintf("%s best %s=%.4g (trial %d)", study.Name, study.Objective.Metric, best.Value, best.Trial))
			}
			bar.Set(done)
		}
	} else {
		r.Log = slog.New(slog.NewTextHandler(stderr, nil))
	}
	sum, err := r.Run(ctx)
	if bar != nil {
		bar.Finish()
	}
	if err != nil {
		return err
	}
	// The report is redrawn from the journal; a study whose report cannot
	// be drawn still ran, so that is said, not hidden behind the results.
	rep, rerr := tuning.WriteReport(*out)
	if rerr != nil {
		fmt.Fprintf(stderr, "tune: report: %v\n", rerr)
	}
	if *format == "json" {
		b, err := json.Marshal(sum)
		if err != nil {
			return fmt.Errorf("summary: %w", err)
		}
		_, err = fmt.Fprintf(stdout, "%s\n", b)
		return err
	}
	printTuneSummary(stdout, study, sum, *out)
	if rep != nil {
		printReport(stdout, rep)
	}
	return rerr
}

// studyObjective is what runs one trial of study; dir is the study folder,
// whose journal tells a resumed study the batch size it was probed with.
func studyObjective(s *tuning.Study, dir string, log io.Writer) (tuning.TrialFunc, error) {
	if c := s.Objective.Command; len(c) > 0 {
		// A program that is not there would fail the first trial and stop
		// the study after its folder was made; say so before.
		if _, err := exec.LookPath(c[0]); err != nil {
			return nil, fmt.Errorf("study: objective.command[0] %q: %w", c[0], err)
		}
		return tuning.CommandObjective(c, s.Objective.Metric), nil
	}
	// Check the parameters' names and values before anything is written: a
	// name the trainer does not know would fail every trial the same way.
	space := tuning.NewSpace(s)
	sample := space.Params(make([]float64, space.Dim()))
	if _, err := tuning.ParseHeadParams(sample); err != nil {
		return nil, fmt.Errorf("study: builtin head: %w", err)
	}
	if s.Objective.Features == "" {
		return nil, fmt.Errorf("study: objective.features: the built-in head needs a features file (scopewatch tune features)")
	}
	f, err := tuning.ReadFeatures(s.Objective.Features)
	if err != nil {
		return nil, err
	}
	obj, err := tuning.HeadObjective(f, s.Objective.Metric)
	if err != nil {
		return nil, fmt.Errorf("study: %w", err)
	}
	if _, fixed := sample[tuning.HeadBatchSize]; fixed {
		return obj, nil
	}
	// The batch size is the dataset's, fixed once by throughput and never
	// tuned; a resumed study keeps the one its trials were run with.
	batch := tuning.JournalledBatchSize(dir)
	if batch == 0 {
		batch = tuning.ProbeBatchSize(f, nil, time.Now)
		fmt.Fprintf(log, "tune: batch size %d (fastest of the throughput probe on %d samples)\n", batch, f.N())
	}
	return func(ctx context.Context, in tuning.TrialInput, keep func(int, float64) bool) (tuning.Outcome, error) {
		ps := maps.Clone(in.Params)
		ps[tuning.HeadBatchSize] = batch
		in.Params = ps
		return obj(ctx, in, keep)
	}, nil
}

func tuneReport(args []string, stdout, stderr io.Writer) error {
	fs := newFlagSet("tune report", stderr)
	pos, err := parseInterleaved(fs, args)
	if err != nil {
		return err
	}
	if len(pos) != 1 {
		return fmt.Errorf("%w: want tune report DIR", errUsage)
	}
	rep, err := tuning.WriteReport(pos[0])
	if err != nil {
		return err
	}
	printReport(stdout, rep)
	return nil
}

func printReport(w io.Writer, rep *tuning.Report) {
	for _, wn := range rep.Warnings {
		fmt.Fprintf(w, "warning: %s\n", wn)
	}
	fmt.Fprintf(w, "report: %s (%d plots)\n", rep.HTML, len(rep.Plots))
}

func printTuneSummary(w io.Writer, s *tuning.Study, sum tuning.Summary, dir string) {
	fmt.Fprintf(w, "study %s: %d trials (%d complete, %d pruned, %d failed), %d epochs\n",
		s.Name, sum.Trials, sum.Complete, sum.Pruned, sum.Failed, sum.Epochs)
	if sum.Best == nil {
		fmt.Fprintf(w, "no trial completed; see the reasons in %s\n", filepath.Join(dir, "journal.jsonl"))
		return
	}
	fmt.Fprintf(w, "best: trial %d, %s = %.6g, %s\n", sum.Best.Trial, s.Objective.Metric, sum.Best.Value, sum.Best.Params.String())
	for _, rep := range sum.Replicates {
		fmt.Fprintf(w, "finalist trial %d over %d seeds: %s = %s\n", rep.Trial, len(rep.Seeds), s.Objective.Metric, meanPlusMinus(rep.Mean, rep.Std))
	}
}

func meanPlusMinus(mean, std float64) string {
	if math.IsNaN(mean) {
		return "every replicate failed"
	}
	return fmt.Sprintf("%.6g ± %.2g", mean, std)
}
