// Command mahalanobis measures a feature-space plausibility gate: the
// Mahalanobis distance of a crop's backbone features to nominal crops
// (shrunk covariance), with the threshold at the 99.5th percentile of
// slide-disjoint held-out nominal crops (0.5% false rejections), and how
// many of each kind of non-cell image it rejects:
//
//	go run ./scripts/ood/mahalanobis NOMINAL.features JUNK.features
//
// (features from `scopewatch tune features`; JUNK from scripts/ood/junk).
package main

import (
	"fmt"
	"math"
	"os"
	"sort"

	"gonum.org/v1/gonum/mat"

	"github.com/scopewatch/scopewatch/tuning"
)

func main() {
	ref, err := tuning.ReadFeatures(os.Args[1])
	if err != nil {
		panic(err)
	}
	junk, err := tuning.ReadFeatures(os.Args[2])
	if err != nil {
		panic(err)
	}
	d := ref.Dim
	train, held := tuning.SplitBySlide(ref, 0.3, 7)
	mean := make([]float64, d)
	for _, i := range train {
		for j, v := range ref.Row(i) {
			mean[j] += float64(v)
		}
	}
	for j := range mean {
		mean[j] /= float64(len(train))
	}
	cov := mat.NewSymDense(d, nil)
	x := make([]float64, d)
	for _, i := range train {
		for j, v := range ref.Row(i) {
			x[j] = float64(v) - mean[j]
		}
		cov.SymRankOne(cov, 1/float64(len(train)-1), mat.NewVecDense(d, x))
	}
	tr := 0.0
	for j := 0; j < d; j++ {
		tr += cov.At(j, j)
	}
	for j := 0; j < d; j++ {
		cov.SetSym(j, j, cov.At(j, j)+0.01*tr/float64(d))
	}
	var ch mat.Cholesky
	if !ch.Factorize(cov) {
		panic("cov")
	}
	dist := func(row []float32) float64 {
		for j, v := range row {
			x[j] = float64(v) - mean[j]
		}
		var y mat.VecDense
		ch.SolveVecTo(&y, mat.NewVecDense(d, x))
		return math.Sqrt(mat.Dot(&y, mat.NewVecDense(d, x)))
	}
	var hd []float64
	for _, i := range held {
		hd = append(hd, dist(ref.Row(i)))
	}
	sort.Float64s(hd)
	thr := hd[int(0.995*float64(len(hd)))]
	fmt.Printf("reference: %d train, %d held-out crops (slide-disjoint); held-out distance median %.1f, 99.5th pct %.1f (threshold)\n", len(train), len(held), hd[len(hd)/2], thr)
	byKind := map[string][2]int{}
	minD := map[string]float64{}
	for i := 0; i < junk.N(); i++ {
		k := junk.Slide[i]
		dd := dist(junk.Row(i))
		c := byKind[k]
		c[1]++
		if dd > thr {
			c[0]++
		}
		byKind[k] = c
		if m, ok := minD[k]; !ok || dd < m {
			minD[k] = dd
		}
	}
	var ks []string
	for k := range byKind {
		ks = append(ks, k)
	}
	sort.Strings(ks)
	for _, k := range ks {
		fmt.Printf("%-8s rejected %d/%d (smallest distance %.1f)\n", k, byKind[k][0], byKind[k][1], minD[k])
	}
}
