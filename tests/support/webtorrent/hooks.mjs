// Resolve hook: `webtorrent` imported by webtorrent-cli -> local.mjs?real=<the real module's URL>.
const WRAP = new URL('./local.mjs', import.meta.url)
export async function resolve (specifier, context, next) {
  if (specifier === 'webtorrent' && context.parentURL && context.parentURL.includes('/webtorrent-cli/')) {
    const real = await next(specifier, context)
    const url = new URL(WRAP); url.searchParams.set('real', real.url)
    return { url: url.href, format: 'module', shortCircuit: true }
  }
  return next(specifier, context)
}
