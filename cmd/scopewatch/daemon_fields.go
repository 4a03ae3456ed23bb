package main

import (
	"github.com/scopewatch/scopewatch/inference"
	"github.com/scopewatch/scopewatch/internal/config"
)

// newFieldAnalyzer returns the field pipeline (segmentation, then every
// cell classified), or nil while the inference package has none.
func newFieldAnalyzer(clf *inference.Classifier, cfg config.Config) fieldAnalyzer {
	return nil
}
