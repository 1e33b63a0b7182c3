import { defineConfig } from 'vite';
import { svelte } from '@sveltejs/vite-plugin-svelte';

// Built files are embedded into the `ten` binary (crates/tenement-edge, rust-embed), so the
// output must be self-contained: no CDN, no external fonts, hashed asset names.
export default defineConfig({
  plugins: [svelte()],
  base: '/',
  build: {
    outDir: 'dist',
    emptyOutDir: true,
    assetsDir: 'assets',
    sourcemap: false,
  },
});
