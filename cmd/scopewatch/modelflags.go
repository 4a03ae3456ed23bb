package main

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"runtime"
	"strings"

	"github.com/scopewatch/scopewatch/inference"
	"github.com/scopewatch/scopewatch/internal/daemon"
)

// The flags and set-up shared by the commands that open a model bundle:
// classify, fields, bench, baseline and tune features run its classifier
// (modelFlags); bundle verify and pack only check it (bundleCheckFlags).

const (
	modelFlagHelp  = "model bundle folder or .tar (default: models/default of the source tree, else /usr/share/scopewatch/models/default)"
	ortLibFlagHelp = "ONNX Runtime shared library (default: $SCOPEWATCH_ORT_LIB, next to the binary, the source tree's .cache, /usr/lib/scopewatch)"
)

// modelFlagOptions says which of the optional model flags a command takes.
type modelFlagOptions struct {
	// modelHelp replaces --model's help (default: modelFlagHelp).
	modelHelp string
	// batch, when set, adds --batch N (default 32); it names what a batch
	// holds ("images", "cells").
	batch string
	// sessions adds --sessions and --threads.
	sessions bool
}

// modelFlags are --model, --ort-lib, --keys and --allow-unsigned, and as
// asked --batch, --sessions and --threads.
type modelFlags struct {
	bundleCheckFlags
	model, ortLib     string
	batch             int
	sessions, threads int
	opts              modelFlagOptions
}

func addModelFlags(fs *flag.FlagSet, o modelFlagOptions) *modelFlags {
	f := &modelFlags{bundleCheckFlags: addBundleCheckFlags(fs), opts: o}
	help := o.modelHelp
	if help == "" {
		help = modelFlagHelp
	}
	fs.StringVar(&f.model, "model", "", help)
	fs.StringVar(&f.ortLib, "ort-lib", "", ortLibFlagHelp)
	if o.batch != "" {
		fs.IntVar(&f.batch, "batch", 32, o.batch+" per inference batch")
	}
	if o.sessions {
		fs.IntVar(&f.sessions, "sessions", 0, "concurrent inference sessions (0: one per CPU)")
		fs.IntVar(&f.threads, "threads", 0, "ONNX Runtime intra-op threads per session (0: CPUs / sessions)")
	}
	return f
}

// open checks --batch, opens and verifies the bundle (the default one when
// --model is not given) and builds its classifier with opts, completed by
// --ort-lib and, when the command takes them, --batch, --sessions and
// --threads.
func (f *modelFlags) open(opts inference.ClassifierOptions) (*inference.Classifier, *inference.Bundle, error) {
	clf, b, _, err := f.openWith(opts, nil)
	return clf, b, err
}

// openGated is open with the plausibility gate the daemon applies (see
// daemon.PlausibilityGate): the classifier then produces what the gate
// needs. A bundle without a plausibility reference gets a size-only gate
// and a warning on warn.
func (f *modelFlags) openGated(opts inference.ClassifierOptions, warn io.Writer) (*inference.Classifier, *inference.Bundle, *daemon.PlausibilityGate, error) {
	return f.openWith(opts, warn)
}

func (f *modelFlags) openWith(opts inference.ClassifierOptions, warn io.Writer) (*inference.Classifier, *inference.Bundle, *daemon.PlausibilityGate, error) {
	if f.opts.batch != "" {
		if f.batch < 1 {
			return nil, nil, nil, fmt.Errorf("%w: --batch must be at least 1, got %d", errUsage, f.batch)
		}
		opts.Batch = f.batch
	}
	opts.Engine.ORTLib = f.ortLib
	if f.opts.sessions {
		opts.Engine.IntraOpThreads = f.threads
		opts.Engine.Sessions = throughputSessions(f.sessions)
	}
	dir := f.model
	if dir == "" {
		var err error
		if dir, err = defaultModelDir(); err != nil {
			return nil, nil, nil, err
		}
	}
	bopts, _, err := f.options()
	if err != nil {
		return nil, nil, nil, err
	}
	b, err := inference.OpenBundle(dir, bopts)
	if err != nil {
		return nil, nil, nil, err
	}
	var gate *daemon.PlausibilityGate
	if warn != nil {
		var gerr error
		gate, gerr = daemon.NewPlausibilityGate(b, dir)
		switch {
		case errors.Is(gerr, daemon.ErrNoReference):
			fmt.Fprintf(warn, "scopewatch: warning: plausibility gate checks the crop size only: %v\n", gerr)
		case gerr != nil:
			b.Close()
			return nil, nil, nil, gerr
		}
		if gate.NeedsFeatures() {
			opts.NoFeatures = false
		}
	}
	clf, err := inference.NewClassifier(b, opts)
	if err != nil {
		b.Close()
		return nil, nil, nil, fmt.Errorf("bundle %s: %w", dir, err)
	}
	return clf, b, gate, nil
}

// throughputSessions resolves --sessions for the batch tools. By default
// each CPU runs its own single-threaded session: on small inputs such as
// 128x128 crops, intra-op parallelism spends a good part of its time
// synchronising threads, while independent sessions keep every core on
// useful work (measured with `scopewatch bench --sessions 1 --threads 2`
// against the default).
func throughputSessions(n int) int {
	if n > 0 {
		return n
	}
	return runtime.NumCPU()
}

// defaultModelDir finds the shipped default bundle: models/default of the
// source tree (found like the ONNX Runtime library), else the installed
// copy.
func defaultModelDir() (string, error) {
	var tried []string
	if root, ok := inference.ModuleRoot(); ok {
		p := filepath.Join(root, "models", "default")
		if _, err := os.Stat(filepath.Join(p, inference.ManifestFile)); err == nil {
			return p, nil
		}
		tried = append(tried, p)
	}
	p := "/usr/share/scopewatch/models/default"
	if _, err := os.Stat(filepath.Join(p, inference.ManifestFile)); err == nil {
		return p, nil
	}
	tried = append(tried, p)
	return "", fmt.Errorf("no default model bundle (looked in %s); pass --model DIR", strings.Join(tried, ", "))
}

// bundleCheckFlags are --keys and --allow-unsigned: which signatures a
// bundle must carry.
type bundleCheckFlags struct {
	keys          *string
	allowUnsigned *bool
}

func addBundleCheckFlags(fs *flag.FlagSet) bundleCheckFlags {
	return bundleCheckFlags{
		keys:          fs.String("keys", "", "trusted public key file or folder of *.pub (default /etc/scopewatch/keys, else models/keys)"),
		allowUnsigned: fs.Bool("allow-unsigned", false, "accept a bundle without a trusted signature (development only)"),
	}
}

// options resolves the trusted keys; it returns where they came from.
func (f bundleCheckFlags) options() (inference.BundleOptions, string, error) {
	opts := inference.BundleOptions{AllowUnsigned: *f.allowUnsigned}
	path := *f.keys
	if path == "" {
		path = inference.DefaultKeysPath()
	}
	if path == "" {
		if opts.AllowUnsigned {
			return opts, "", nil
		}
		return opts, "", fmt.Errorf("%w: pass --keys FILE|DIR (neither /etc/scopewatch/keys nor models/keys exists), or --allow-unsigned for development", inference.ErrNoTrustedKeys)
	}
	keys, err := inference.LoadPublicKeys(path)
	if err != nil {
		return opts, "", err
	}
	opts.TrustedKeys = keys
	return opts, path, nil
}
