// Command junk writes a labelled folder of images that are not blood cells
// the model can judge, 20 of each of synth.JunkKinds (noise, solid black,
// white and colours, gradients, colour blocks, text, natural-image-like
// textures, blank smear, foreign objects, and from nominal crops:
// out-of-focus, too small, too large), for measuring the plausibility gate:
//
//	go run ./scripts/ood/junk [--seed S] DIR NOMINAL_DIR
//	bin/scopewatch classify --format csv DIR > junk.csv   # rejected column per image
//
// NOMINAL_DIR is a `scopewatch synth cells` folder (at least 60 crops) from
// a seed the gate was not calibrated on. labels.csv's slide column names
// the kind, so features kept by `tune features` keep it too
// (scripts/ood/mahalanobis reads them).
package main

import (
	"encoding/csv"
	"flag"
	"fmt"
	"image"
	"image/png"
	"log"
	"os"
	"path/filepath"

	"github.com/scopewatch/scopewatch/internal/synth"
)

func main() {
	seed := flag.Uint64("seed", 1, "generator seed (keep it apart from any calibration data)")
	flag.Parse()
	if flag.NArg() != 2 {
		log.Fatal("usage: junk [--seed S] DIR NOMINAL_DIR")
	}
	dir, nomDir := flag.Arg(0), flag.Arg(1)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		log.Fatal(err)
	}
	f, err := os.Open(filepath.Join(nomDir, "labels.csv"))
	if err != nil {
		log.Fatal(err)
	}
	recs, err := csv.NewReader(f).ReadAll()
	f.Close()
	if err != nil || len(recs) < 61 {
		log.Fatalf("%s/labels.csv: want at least 60 crops (%v)", nomDir, err)
	}
	rows := [][]string{{"path", "label", "slide"}}
	nominal := 0
	for _, kind := range synth.JunkKinds {
		for i := range 20 {
			var nom image.Image
			if synth.JunkNeedsNominal(kind) {
				nom = load(filepath.Join(nomDir, recs[1+nominal%(len(recs)-1)][0]))
				nominal++
			}
			img, err := synth.Junk(kind, i, *seed, nom)
			if err != nil {
				log.Fatal(err)
			}
			name := fmt.Sprintf("%s%02d.png", kind, i)
			save(filepath.Join(dir, name), img)
			rows = append(rows, []string{name, "uninfected", kind})
		}
	}
	out, err := os.Create(filepath.Join(dir, "labels.csv"))
	if err != nil {
		log.Fatal(err)
	}
	cw := csv.NewWriter(out)
	cw.WriteAll(rows)
	if err := cw.Error(); err != nil {
		log.Fatal(err)
	}
	if err := out.Close(); err != nil {
		log.Fatal(err)
	}
}

func load(path string) image.Image {
	f, err := os.Open(path)
	if err != nil {
		log.Fatal(err)
	}
	defer f.Close()
	img, err := png.Decode(f)
	if err != nil {
		log.Fatal(err)
	}
	return img
}

func save(path string, img image.Image) {
	f, err := os.Create(path)
	if err != nil {
		log.Fatal(err)
	}
	if err := png.Encode(f, img); err != nil {
		log.Fatal(err)
	}
	if err := f.Close(); err != nil {
		log.Fatal(err)
	}
}
