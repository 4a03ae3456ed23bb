package main

import (
	"encoding/csv"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
)

// labelRow is one row of a dataset's labels.csv (path,label[,slide]), as
// `synth cells` and `collect export` write it.
type labelRow struct {
	Path     string // joined with the folder of the labels.csv
	Positive bool   // parasitized
	Slide    string // empty when the file has no slide column
}

// readLabelsCSV reads a labels.csv: a header naming at least the path and
// label columns, labels parasitized|uninfected (or 1|0). hasSlide reports
// a slide column. Errors name the file and the line.
func readLabelsCSV(path string) (rows []labelRow, hasSlide bool, err error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, false, err
	}
	defer f.Close()
	return parseLabelsCSV(f, path)
}

func parseLabelsCSV(in io.Reader, path string) (rows []labelRow, hasSlide bool, err error) {
	r := csv.NewReader(in)
	r.ReuseRecord = true
	head, err := r.Read()
	if err != nil {
		return nil, false, fmt.Errorf("%s: header: %w", path, err)
	}
	pc, lc, sc := -1, -1, -1
	for i, h := range head {
		switch strings.TrimSpace(h) {
		case "path":
			pc = i
		case "label":
			lc = i
		case "slide":
			sc = i
		}
	}
	if pc < 0 || lc < 0 {
		return nil, false, fmt.Errorf("%s: header %q: want path and label columns", path, head)
	}
	dir := filepath.Dir(path)
	for line := 2; ; line++ {
		rec, err := r.Read()
		if errors.Is(err, io.EOF) {
			return rows, sc >= 0, nil
		}
		if err != nil {
			return nil, false, fmt.Errorf("%s: %w", path, err)
		}
		rel := filepath.Clean(strings.TrimSpace(rec[pc]))
		if rel == "." || !filepath.IsLocal(rel) {
			return nil, false, fmt.Errorf("%s line %d: path %q: want a file inside the folder", path, line, rec[pc])
		}
		row := labelRow{Path: filepath.Join(dir, rel)}
		switch strings.TrimSpace(rec[lc]) {
		case "parasitized", "1":
			row.Positive = true
		case "uninfected", "0":
		default:
			return nil, false, fmt.Errorf("%s line %d: label %q: want parasitized or uninfected", path, line, rec[lc])
		}
		if sc >= 0 {
			row.Slide = rec[sc]
		}
		rows = append(rows, row)
	}
}
