package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"time"

	"github.com/scopewatch/scopewatch/internal/synth"
)

func runSynth(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	if len(args) == 0 || (args[0] != "cells" && args[0] != "fields") {
		if len(args) > 0 && (args[0] == "-h" || args[0] == "--help") {
			synthUsage(stderr)
			return flag.ErrHelp
		}
		synthUsage(stderr)
		return fmt.Errorf("%w: want 'synth cells' or 'synth fields'", errUsage)
	}
	kind := args[0]
	fs := newFlagSet("synth "+kind, stderr)
	out := fs.String("out", "", "output folder (required)")
	n := fs.Int("n", 0, "number of images to generate (required)")
	seed := fs.Int64("seed", 1, "random seed; a new seed gives new slides")
	perSlide, perSlideFlag := 0, "cells-per-slide"
	if kind == "cells" {
		fs.IntVar(&perSlide, perSlideFlag, synth.DefaultCellsPerSlide, "crops per slide")
	} else {
		perSlideFlag = "fields-per-slide"
		fs.IntVar(&perSlide, perSlideFlag, synth.DefaultFieldsPerSlide, "fields per slide")
	}
	workers := fs.Int("workers", 0, "parallel workers (0: one per CPU); output is identical for any value")
	var k synth.Knobs
	fs.Float64Var(&k.StainShift, "stain-shift", 0, "stain hue shift in degrees (-180..180)")
	fs.Float64Var(&k.Blur, "blur", 0, "extra defocus, gaussian sigma in pixels (0..20)")
	fs.Float64Var(&k.Brightness, "brightness", 0, "additive brightness, full scale 1 (-1..1)")
	fs.Float64Var(&k.Gamma, "gamma", 0, "camera gamma, v^gamma (0.1..10; 0: nominal 1)")
	fs.Float64Var(&k.Noise, "noise", 0, "extra gaussian sensor noise sigma, full scale 1 (0..1)")
	fs.IntVar(&k.JPEGQuality, "jpeg-quality", 0, "write JPEG at this quality (1..100; 0: PNG)")
	fs.Float64Var(&k.Magnification, "magnification", 0, "geometric scale factor (0.25..4; 0: nominal 1)")
	fs.Float64Var(&k.Prevalence, "prevalence", 0, "fraction of parasitized red cells (0..1); unset: 0.5 for cells, per-slide 0-10% for fields")
	if err := fs.Parse(args[1:]); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return err
		}
		return fmt.Errorf("%w: %v", errUsage, err)
	}
	if fs.NArg() > 0 {
		return fmt.Errorf("%w: unexpected argument %q", errUsage, fs.Arg(0))
	}
	if *out == "" {
		return fmt.Errorf("%w: -out: required (output folder)", errUsage)
	}
	if *n <= 0 {
		return fmt.Errorf("%w: -n: %d, want a positive number of images", errUsage, *n)
	}
	if perSlide <= 0 {
		return fmt.Errorf("%w: -%s: %d, want > 0", errUsage, perSlideFlag, perSlide)
	}
	if *workers < 0 {
		return fmt.Errorf("%w: -workers: %d, want >= 0", errUsage, *workers)
	}
	// An explicit --prevalence 0 means "no parasites", not "default".
	fs.Visit(func(f *flag.Flag) {
		if f.Name == "prevalence" && k.Prevalence == 0 {
			k.Prevalence = synth.ZeroPrevalence
		}
	})
	if err := k.Validate(); err != nil {
		return fmt.Errorf("%w: -%v", errUsage, err)
	}
	start := time.Now()
	if kind == "cells" {
		sum, err := synth.WriteCells(ctx, synth.CellsConfig{
			Dir: *out, N: *n, Seed: *seed, CellsPerSlide: perSlide, Knobs: k, Workers: *workers,
		})
		if err != nil {
			return err
		}
		fmt.Fprintf(stderr, "wrote %d crops (%d parasitized) from %d slides to %s in %s\n",
			sum.Images, sum.Parasitized, sum.Slides, *out, time.Since(start).Round(time.Millisecond))
		return nil
	}
	sum, err := synth.WriteFields(ctx, synth.FieldsConfig{
		Dir: *out, N: *n, Seed: *seed, FieldsPerSlide: perSlide, Knobs: k, Workers: *workers,
	})
	if err != nil {
		return err
	}
	fmt.Fprintf(stderr, "wrote %d fields (%d red cells, %d parasitized, %d white cells) from %d slides to %s in %s\n",
		sum.Fields, sum.RBC, sum.Parasitized, sum.WBC, sum.Slides, *out, time.Since(start).Round(time.Millisecond))
	return nil
}

func synthUsage(w io.Writer) {
	fmt.Fprintln(w, "usage: scopewatch synth cells  --out DIR --n N [--seed S] [--cells-per-slide K] [knobs]")
	fmt.Fprintln(w, "       scopewatch synth fields --out DIR --n N [--seed S] [--fields-per-slide K] [knobs]")
	fmt.Fprintln(w, "knobs: --stain-shift --blur --brightness --gamma --noise --jpeg-quality --magnification --prevalence")
	fmt.Fprintln(w, "Run 'scopewatch synth cells -h' for details.")
}
