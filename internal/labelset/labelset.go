// Package labelset reads the labelled image folders that the tools pass
// around: a folder with a labels.csv (path,label[,slide][,device]) and the
// images it names, as `synth cells` and `collect export` write them.
package labelset

import (
	"encoding/csv"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
)

// Row is one row of a dataset's labels.csv.
type Row struct {
	Path     string // joined with the folder of the labels.csv
	Positive bool   // parasitized
	Slide    string // empty when the file has no slide column
	Device   string // empty when the file has no device column
}

// ReadCSV reads a labels.csv: a header naming at least the path and
// label columns, labels parasitized|uninfected (or 1|0). hasSlide reports
// a slide column. Errors name the file and the line.
func ReadCSV(path string) (rows []Row, hasSlide bool, err error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, false, err
	}
	defer f.Close()
	return ParseCSV(f, path)
}

// ParseCSV is ReadCSV on an open file; path names it in errors and is the
// folder the image paths are relative to.
func ParseCSV(in io.Reader, path string) (rows []Row, hasSlide bool, err error) {
	r := csv.NewReader(in)
	r.ReuseRecord = true
	head, err := r.Read()
	if err != nil {
		return nil, false, fmt.Errorf("%s: header: %w", path, err)
	}
	pc, lc, sc, dc := -1, -1, -1, -1
	for i, h := range head {
		switch strings.TrimSpace(h) {
		case "path":
			pc = i
		case "label":
			lc = i
		case "slide":
			sc = i
		case "device":
			dc = i
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
		row := Row{Path: filepath.Join(dir, rel)}
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
		if dc >= 0 {
			row.Device = strings.TrimSpace(rec[dc])
		}
		rows = append(rows, row)
	}
}
