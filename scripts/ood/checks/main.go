// Command checks measures what each part of the plausibility gate refuses
// on a labelled folder (labels.csv's slide column names the kind, as
// scripts/ood/junk writes it): the statistics alone, the feature distance
// alone, the whole gate, and the gate without its background-share check
// (which refuses most junk first, so the others' share is otherwise
// hidden):
//
//	go run ./scripts/ood/checks models/default models/default/baseline.json JUNK_DIR
//
// REFERENCE is a baseline.json with a plausibility reference or a
// plausibility file (baseline --plausibility-out).
package main

import (
	"context"
	"encoding/csv"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"sort"

	"github.com/scopewatch/scopewatch/drift"
	"github.com/scopewatch/scopewatch/inference"
)

func main() {
	if len(os.Args) != 4 {
		fmt.Fprintln(os.Stderr, "usage: checks MODEL REFERENCE DIR")
		os.Exit(2)
	}
	keys, err := inference.LoadPublicKeys(inference.DefaultKeysPath())
	if err != nil {
		panic(err)
	}
	b, err := inference.OpenBundle(os.Args[1], inference.BundleOptions{TrustedKeys: keys})
	if err != nil {
		panic(err)
	}
	clf, err := inference.NewClassifier(b, inference.ClassifierOptions{})
	if err != nil {
		panic(err)
	}
	f, err := drift.LoadPlausibilityFile(os.Args[2])
	if err != nil {
		crop, field, berr := drift.LoadBaselinePlausibility(os.Args[2])
		if berr != nil || crop == nil {
			panic(fmt.Sprintf("%s: neither a plausibility file (%v) nor a baseline with a plausibility reference (%v)", os.Args[2], err, berr))
		}
		f = &drift.PlausibilityFile{Plausibility: crop, Field: field}
	}
	if !slices.Equal(f.Plausibility.StatNames(), inference.AppearanceNames) {
		panic(fmt.Sprintf("reference statistics %v are not this build's %v", f.Plausibility.StatNames(), inference.AppearanceNames))
	}
	dir := os.Args[3]
	fh, err := os.Open(filepath.Join(dir, "labels.csv"))
	if err != nil {
		panic(err)
	}
	recs, err := csv.NewReader(fh).ReadAll()
	if err != nil {
		panic(err)
	}
	var paths, kinds []string
	for _, r := range recs[1:] {
		paths = append(paths, filepath.Join(dir, r[0]))
		kinds = append(kinds, r[2])
	}
	type cnt struct{ n, stats, feat, both, nobg, nobgfeat int }
	by := map[string]*cnt{}
	clf.Stream(context.Background(), len(paths), func(i int) inference.Input { return inference.Input{Path: paths[i]} }, func(r inference.Result) {
		k := kinds[r.Index]
		c := by[k]
		if c == nil {
			c = &cnt{}
			by[k] = c
		}
		c.n++
		st := f.Plausibility.Stratum(r.PParasitized)
		if r.Err != nil {
			panic(r.Err)
		}
		v := r.Appearance.Values()
		sOK, nbOK := true, true
		for j, rg := range st.Stats {
			if !(v[j] >= rg.Lo && v[j] <= rg.Hi) {
				sOK = false
				if rg.Name != "background" {
					nbOK = false
				}
			}
		}
		if !nbOK {
			c.nobg++
		}
		d := st.Distance(r.Features)
		fOK := d <= st.Features.Threshold
		if !sOK {
			c.stats++
		}
		if !fOK {
			c.feat++
		}
		if !sOK || !fOK {
			c.both++
		}
		if !nbOK || !fOK {
			c.nobgfeat++
		}
	})
	var ks []string
	for k := range by {
		ks = append(ks, k)
	}
	sort.Strings(ks)
	for _, k := range ks {
		c := by[k]
		fmt.Printf("%-8s n=%d statistics alone %d, features alone %d, gate %d, statistics without background %d, gate without background %d\n", k, c.n, c.stats, c.feat, c.both, c.nobg, c.nobgfeat)
	}
}
