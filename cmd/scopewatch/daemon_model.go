package main

import (
	"fmt"
	"log/slog"

	"github.com/scopewatch/scopewatch/internal/config"
)

// openAnalyzer loads the configured model bundle.
func openAnalyzer(cfg config.Config, log *slog.Logger) (analyzer, error) {
	return nil, fmt.Errorf("%w: the inference classifier is not wired yet", errNoModel)
}
