// Command junk writes a labelled folder of images that are not blood cells
// (noise, solid black, white and colours, gradients, colour blocks; 20 of
// each, 128 px) for measuring a plausibility gate:
//
//	go run ./scripts/ood/junk DIR
//	bin/scopewatch tune features --data DIR --out junk.features
//
// The slide column names the kind, so the features keep it.
package main

import (
	"fmt"
	"image"
	"image/color"
	"image/png"
	"math/rand/v2"
	"os"
	"path/filepath"
)

func save(dir, name string, img image.Image, rows *[]string, kind string) {
	f, _ := os.Create(filepath.Join(dir, name))
	png.Encode(f, img)
	f.Close()
	*rows = append(*rows, fmt.Sprintf("%s,uninfected,%s", name, kind))
}

func main() {
	dir := os.Args[1]
	os.MkdirAll(dir, 0o755)
	r := rand.New(rand.NewPCG(1, 2))
	rows := []string{"path,label,slide"}
	for i := 0; i < 20; i++ {
		n := image.NewRGBA(image.Rect(0, 0, 128, 128))
		for j := range n.Pix {
			n.Pix[j] = uint8(r.UintN(256))
			if j%4 == 3 {
				n.Pix[j] = 255
			}
		}
		save(dir, fmt.Sprintf("noise%d.png", i), n, &rows, "noise")
		solid := func(c color.RGBA) *image.RGBA {
			m := image.NewRGBA(image.Rect(0, 0, 128, 128))
			for y := 0; y < 128; y++ {
				for x := 0; x < 128; x++ {
					m.Set(x, y, c)
				}
			}
			return m
		}
		save(dir, fmt.Sprintf("black%d.png", i), solid(color.RGBA{uint8(i), uint8(i), uint8(i), 255}), &rows, "black")
		save(dir, fmt.Sprintf("white%d.png", i), solid(color.RGBA{uint8(235 + i), uint8(235 + i), uint8(235 + i), 255}), &rows, "white")
		save(dir, fmt.Sprintf("color%d.png", i), solid(color.RGBA{uint8(r.UintN(256)), uint8(r.UintN(256)), uint8(r.UintN(256)), 255}), &rows, "color")
		g := image.NewRGBA(image.Rect(0, 0, 128, 128))
		for y := 0; y < 128; y++ {
			for x := 0; x < 128; x++ {
				g.Set(x, y, color.RGBA{uint8(2 * x), uint8(2 * y), uint8(i * 12), 255})
			}
		}
		save(dir, fmt.Sprintf("grad%d.png", i), g, &rows, "grad")
		b := image.NewRGBA(image.Rect(0, 0, 128, 128))
		for by := 0; by < 16; by++ {
			for bx := 0; bx < 16; bx++ {
				c := color.RGBA{uint8(r.UintN(256)), uint8(r.UintN(256)), uint8(r.UintN(256)), 255}
				for y := 0; y < 8; y++ {
					for x := 0; x < 8; x++ {
						b.Set(bx*8+x, by*8+y, c)
					}
				}
			}
		}
		save(dir, fmt.Sprintf("blocks%d.png", i), b, &rows, "blocks")
	}
	f, _ := os.Create(filepath.Join(dir, "labels.csv"))
	for _, l := range rows {
		fmt.Fprintln(f, l)
	}
	f.Close()
}
