//go:build ignore

// Command synthscores writes synthetic classifier outputs for measuring the
// drift detectors without a model: a test set, a drift-free pool of new
// cells and shifted pools, as CSV (p_parasitized, truth, f0..f63).
//
// Scores imitate a confident binary classifier: logits around -6
// (uninfected) and +5 (parasitized) with spread 2.5 and 10% hard cases near
// the boundary, squashed to float32 probabilities (so many tie at exactly 0
// or 1). "shift" adds to every logit and moves the features (a stain-like
// change of appearance); "blur" shrinks the logits toward 0 (a defocus-like
// loss of confidence). These are stand-ins for real model scores on shifted
// images, documented as such wherever their figures are quoted.
//
//	go run drift/testdata/synthscores/main.go -out DIR
package main

import (
	"bufio"
	"flag"
	"fmt"
	"log"
	"math"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strconv"
)

func cells(n int, prev, shift, blur float64, seed uint64) ([]float64, []int, [][]float32) {
	r := rand.New(rand.NewPCG(seed, 5))
	s := make([]float64, n)
	l := make([]int, n)
	f := make([][]float32, n)
	for i := range n {
		y := 0
		if r.Float64() < prev {
			y = 1
		}
		mu := -6.0
		if y == 1 {
			mu = 5
		}
		if r.Float64() < 0.1 {
			mu /= 4
		}
		lg := (mu+2.5*r.NormFloat64())*(1-blur) + shift
		s[i] = float64(float32(1 / (1 + math.Exp(-lg))))
		l[i] = y
		v := make([]float32, 64)
		for j := range v {
			v[j] = float32(r.NormFloat64() + float64(y)*0.8*float64(j%3) + shift*0.3)
		}
		f[i] = v
	}
	return s, l, f
}

func writeCSV(path string, s []float64, l []int, f [][]float32) {
	out, err := os.Create(path)
	if err != nil {
		log.Fatal(err)
	}
	w := bufio.NewWriter(out)
	fmt.Fprint(w, "p_parasitized,truth")
	for j := range f[0] {
		fmt.Fprintf(w, ",f%d", j)
	}
	fmt.Fprintln(w)
	for i := range s {
		fmt.Fprintf(w, "%s,%d", strconv.FormatFloat(s[i], 'g', -1, 64), l[i])
		for _, v := range f[i] {
			fmt.Fprintf(w, ",%s", strconv.FormatFloat(float64(v), 'g', -1, 32))
		}
		fmt.Fprintln(w)
	}
	if err := w.Flush(); err != nil {
		log.Fatal(err)
	}
	if err := out.Close(); err != nil {
		log.Fatal(err)
	}
}

func main() {
	out := flag.String("out", "", "output folder")
	n := flag.Int("n", 5000, "test-set size")
	pool := flag.Int("pool", 20000, "cells per drift-free or shifted pool")
	prev := flag.Float64("prevalence", 0.1, "parasitized fraction")
	seed := flag.Uint64("seed", 1, "seed of the test set (pools use fixed other seeds)")
	flag.Parse()
	if *out == "" {
		log.Fatal("-out is required")
	}
	if err := os.MkdirAll(*out, 0o755); err != nil {
		log.Fatal(err)
	}
	s, l, f := cells(*n, *prev, 0, 0, *seed)
	writeCSV(filepath.Join(*out, "test.csv"), s, l, f)
	s, l, f = cells(*pool, *prev, 0, 0, 1000+*seed)
	writeCSV(filepath.Join(*out, "null.csv"), s, l, f)
	for i, sev := range []float64{0.25, 0.5, 1} {
		s, l, f = cells(*pool, *prev, sev, 0, 2000+uint64(i)+*seed)
		writeCSV(filepath.Join(*out, fmt.Sprintf("shift%v.csv", sev)), s, l, f)
	}
	for i, sev := range []float64{0.05, 0.15, 0.3} {
		s, l, f = cells(*pool, *prev, 0, sev, 3000+uint64(i)+*seed)
		writeCSV(filepath.Join(*out, fmt.Sprintf("blur%v.csv", sev)), s, l, f)
	}
}
